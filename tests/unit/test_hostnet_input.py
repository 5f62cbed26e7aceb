"""firelet.hostnet's input checks and derived settings: no host changes, just the rules."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firelet.hostnet import BadInput, GuestSettings, NotPermitted
from firelet.hostnet.addressing import free_subnet, parse_interface, peer_address, suggested_mac
from firelet.hostnet.checks import (
    check_link_name,
    check_netns_name,
    check_setup_name,
    check_uid,
    effective_capabilities,
    require_capabilities,
)
from firelet.hostnet.nat import masquerade_ruleset
from firelet.hostnet.record import Made, NetSetup


def test_firecrackers_example_subnet_gives_its_guest_settings() -> None:
    g = GuestSettings.for_tap(IPv4Interface("172.16.0.1/30"))
    assert g.address == IPv4Interface("172.16.0.2/30")
    assert g.gateway == IPv4Address("172.16.0.1")
    assert g.mac == "06:00:AC:10:00:02"
    assert g.boot_arg() == "ip=172.16.0.2::172.16.0.1:255.255.255.252::eth0:off"
    assert g.commands() == ["ip addr add 172.16.0.2/30 dev eth0", "ip link set eth0 up",
                            "ip route add default via 172.16.0.1 dev eth0"]


def test_the_guest_takes_the_first_host_address_that_is_not_the_taps() -> None:
    assert peer_address(IPv4Interface("192.0.2.2/30")) == IPv4Interface("192.0.2.1/30")
    assert peer_address(IPv4Interface("198.51.100.7/24")) == IPv4Interface("198.51.100.1/24")


@pytest.mark.parametrize(("text", "why"), [
    ("172.16.0.1", "prefix length"),
    ("172.16.0.1/31", "/30 or shorter"),
    ("172.16.0.1/32", "/30 or shorter"),
    ("172.16.0.0/30", "network or broadcast"),
    ("172.16.0.3/30", "network or broadcast"),
    ("172.16.0.1/33", "prefix length"),
    ("2001:db8::1/64", "prefix length"),
    ("tap0", "prefix length"),
    ("", "prefix length"),
])
def test_bad_addresses_are_refused_in_one_line(text: str, why: str) -> None:
    with pytest.raises(BadInput, match=why) as err:
        parse_interface(text, "--addr")
    assert "\n" not in str(err.value) and "--addr" in str(err.value)


@given(st.text(max_size=24) | st.from_regex(r"\d{1,3}(\.\d{1,3}){3}/\d{1,2}", fullmatch=True))
def test_any_text_is_refused_or_is_a_host_address_with_room_for_a_guest(text: str) -> None:
    try:
        iface = parse_interface(text)
    except BadInput as exc:
        assert "\n" not in str(exc)
        return
    guest = GuestSettings.for_tap(iface)
    assert guest.address.network == iface.network and guest.address.ip != iface.ip
    assert guest.address.ip not in (iface.network.network_address, iface.network.broadcast_address)


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_the_suggested_mac_is_unicast_locally_administered_and_carries_the_address(value: int) -> None:
    mac = suggested_mac(IPv4Address(value))
    first = int(mac.split(":")[0], 16)
    assert first & 1 == 0 and first & 2 == 2
    assert bytes(int(b, 16) for b in mac.split(":")[2:]) == IPv4Address(value).packed


def test_a_free_subnet_avoids_everything_taken() -> None:
    pool = IPv4Network("10.200.0.0/28")
    taken = [IPv4Network("10.200.0.0/30"), IPv4Network("10.200.0.4/32"), IPv4Network("192.0.2.0/24")]
    assert free_subnet(taken, pool) == IPv4Network("10.200.0.8/30")
    with pytest.raises(BadInput, match="--veth-addr"):
        free_subnet([IPv4Network("10.0.0.0/8")], pool)


@pytest.mark.parametrize("name", ["", "-x", "a" * 13, "a/b", "a b", "vm.1", "ü"])
def test_bad_setup_names(name: str) -> None:
    with pytest.raises(BadInput, match="setup name"):
        check_setup_name(name)


@pytest.mark.parametrize("name", ["", "a" * 16, "a/b", "a b", "-x", "tap\n0"])
def test_bad_link_names(name: str) -> None:
    with pytest.raises(BadInput, match="TAP name"):
        check_link_name(name, "TAP")


def test_good_names_pass() -> None:
    assert check_setup_name("vm-1_a") == "vm-1_a"
    assert check_link_name("tap0.1-x_" + "y" * 6) == "tap0.1-x_" + "y" * 6
    assert check_netns_name("fc.vm-1") == "fc.vm-1"
    with pytest.raises(BadInput):
        check_netns_name("..")
    assert check_uid(0) == 0
    with pytest.raises(BadInput):
        check_uid(2**32 - 1)  # (uid_t)-1: "no owner"


STATUS = "Name:\tpython3\nCapInh:\t0000000000000000\nCapEff:\t{:016x}\nCapBnd:\t000001ffffffffff\n"


def test_capabilities_come_from_capeff() -> None:
    assert effective_capabilities(STATUS.format(1 << 12)) == 1 << 12
    require_capabilities(netns=False, status=STATUS.format(1 << 12))
    require_capabilities(netns=True, status=STATUS.format(1 << 12 | 1 << 21))
    with pytest.raises(NotPermitted, match="CAP_NET_ADMIN"):
        require_capabilities(netns=False, status=STATUS.format(0x1FFFFFFEFFF))  # all but bit 12
    with pytest.raises(NotPermitted, match="CAP_SYS_ADMIN"):
        require_capabilities(netns=True, status=STATUS.format(1 << 12))


def test_the_nat_table_masquerades_only_the_given_subnet_out_of_the_given_interface() -> None:
    text = masquerade_ruleset("firelet-vm1", IPv4Network("172.16.0.0/30"), "eth0")
    assert text.startswith("table ip firelet-vm1 {\n")
    assert "type nat hook postrouting priority srcnat; policy accept;" in text
    assert 'ip saddr 172.16.0.0/30 oifname "eth0" counter masquerade' in text


def test_a_record_survives_json() -> None:
    setup = NetSetup(name="vm1", tap="tap0", tap_address=IPv4Interface("192.0.2.1/30"), netns="vm1", owner=1000,
                     veth_host="fl-vm1", veth_host_address=IPv4Interface("198.51.100.1/30"), veth_netns="veth0",
                     veth_netns_address=IPv4Interface("198.51.100.2/30"), nat_out="eth0",
                     made=[Made("netns", "vm1"), Made("link", "tap0", "vm1"),
                           Made("sysctl", "net/ipv4/ip_forward", None, before="0")])
    again = NetSetup.from_json(setup.to_json())
    assert again == setup
    assert [m.describe() for m in again.made] == [
        "network namespace vm1", "interface tap0 in netns vm1", "sysctl net.ipv4.ip_forward (was 0)"]
