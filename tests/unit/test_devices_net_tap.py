"""virtio-net over a real TAP in a namespace the test makes: the namespace's kernel answers the guest.

A test driver (net_driver.NetDriver) stands for Linux's virtio_net over real guest
memory; the device runs on a real EventLoop; the TAP is made by firelet.hostnet and
opened with Tap.open inside the namespace. Documentation addresses only.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from functools import partial
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

import pytest

from firelet.devices.virtio.net import NetError, Tap
from firelet.devices.virtio.net.frames import VIRTIO_NET_F_MRG_RXBUF
from firelet.hostnet import NetSetup, NetSpec, down, list_setups, up
from firelet.hostnet.netns import rtnl, run_in_netns

from net_driver import GUEST_MAC, NetDriver, exchange, wait_for
from net_frames import (
    BROADCAST,
    ETH_P_ARP,
    ETH_P_IP,
    arp,
    checksum,
    ethernet,
    icmp_echo,
    ipv4,
    is_arp_reply_for,
    is_icmp_echo_reply,
)

_counter = itertools.count()

if os.geteuid() != 0 or not Path("/dev/net/tun").exists():  # pragma: no cover - the CI machine is root
    pytest.fail("these tests make network namespaces and TAPs: run them as root with /dev/net/tun", pytrace=False)


@pytest.fixture
def netns_tap(tmp_path: Path) -> Iterator[NetSetup]:
    state = tmp_path / "state"
    name = f"fn{os.getpid() % 10000}{next(_counter)}"
    setup = up(NetSpec(name=name, netns=name, tap_address=IPv4Interface("192.0.2.1/30"), veth=False), state)
    yield setup
    for made in list_setups(state):
        down(made.name, state)


def _open(setup: NetSetup) -> Tap:
    assert setup.netns is not None
    return run_in_netns(setup.netns, lambda: Tap.open(setup.tap))


def _arp_request(setup: NetSetup) -> bytes:
    guest = setup.guest
    return ethernet(BROADCAST, GUEST_MAC, ETH_P_ARP, arp(1, GUEST_MAC, guest.address.ip, bytes(6), guest.gateway))


def _resolve(drv: NetDriver, setup: NetSetup) -> bytes:
    _, _, reply = exchange(drv, _arp_request(setup), lambda f: is_arp_reply_for(f, setup.guest.gateway))
    assert reply[0:6] == GUEST_MAC and reply[32:38] == GUEST_MAC
    return reply[22:28]


def _ping(drv: NetDriver, setup: NetSetup, gateway_mac: bytes, data: bytes, ident: int) -> tuple[bytes, int]:
    ip = setup.guest.address.ip
    packet = ipv4(ip, IPv4Address("192.0.2.1"), 1, icmp_echo(ident, 1, data), ident=1)
    header, count, reply = exchange(drv, ethernet(gateway_mac, GUEST_MAC, ETH_P_IP, packet),
                                    lambda f: is_icmp_echo_reply(f, ident))
    assert header[1] == 0  # no GSO on a reply this size
    return reply[14:], count


def test_arp_and_ping_through_the_device(netns_tap: NetSetup) -> None:
    drv = NetDriver(_open(netns_tap))
    try:
        drv.start()
        drv.post_rx(64, 1526)
        gateway_mac = _resolve(drv, netns_tap)
        data = bytes(range(56))
        reply, count = _ping(drv, netns_tap, gateway_mac, data, ident=0x4242)
        assert count == 1
        assert checksum(reply[:20]) == 0 and checksum(reply[20:]) == 0
        assert reply[16:20] == netns_tap.guest.address.ip.packed and reply[28:] == data
        m = drv.net.metrics
        assert m.tx_packets_count >= 2 and m.rx_packets_count >= 2 and m.tx_fails == 0
        assert m.tx_bytes_count >= 42 + 98 and m.rx_bytes_count >= 42 + 98
        assert drv.irq.count >= 1
    finally:
        drv.close()


def _set_mtu(setup: NetSetup, mtu: int) -> None:
    with rtnl(setup.netns) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname=setup.tap)[0], mtu=mtu)


def test_mergeable_buffers_carry_a_large_frame_in_several_buffers(netns_tap: NetSetup) -> None:
    _set_mtu(netns_tap, 9000)
    drv = NetDriver(_open(netns_tap))
    try:
        assert drv.net.has_feature(VIRTIO_NET_F_MRG_RXBUF)
        drv.start()
        drv.post_rx(64, 1536)
        gateway_mac = _resolve(drv, netns_tap)
        data = os.urandom(8000)
        reply, count = _ping(drv, netns_tap, gateway_mac, data, ident=0x77)
        assert count == -(-(12 + 14 + 20 + 8 + 8000) // 1536) == 6
        assert reply[28:] == data and checksum(reply[20:]) == 0
    finally:
        drv.close()


def test_without_mergeable_buffers_a_frame_too_big_for_its_buffer_is_dropped_and_counted(netns_tap: NetSetup) -> None:
    _set_mtu(netns_tap, 9000)
    probe = NetDriver(_open(netns_tap))
    features = probe.net.avail_features & ~(1 << VIRTIO_NET_F_MRG_RXBUF)
    probe.close()
    drv = NetDriver(_open(netns_tap), features=features)
    try:
        drv.start()
        drv.post_rx(64, 1526)
        gateway_mac = _resolve(drv, netns_tap)
        ip = netns_tap.guest.address.ip
        packet = ipv4(ip, IPv4Address("192.0.2.1"), 1, icmp_echo(0x99, 1, bytes(4000)), ident=1)
        drv.send(ethernet(gateway_mac, GUEST_MAC, ETH_P_IP, packet))
        wait_for(lambda: drv.net.metrics.rx_fails >= 1, "the big reply to be dropped")
        assert not any(is_icmp_echo_reply(f, 0x99) for _, _, f in drv.on_loop(drv.frames))
        # The device goes on: a small ping still works.
        assert _ping(drv, netns_tap, gateway_mac, b"small", ident=0x9A)[1] == 1
    finally:
        drv.close()


def test_no_receive_buffers_stops_reading_the_tap_until_the_driver_adds_some(netns_tap: NetSetup) -> None:
    drv = NetDriver(_open(netns_tap))
    try:
        drv.start()
        request = _arp_request(netns_tap)
        drv.send(request)
        wait_for(lambda: drv.net.metrics.no_rx_avail_buffer >= 1, "the device to find no buffers")
        m = drv.net.metrics
        reads, tap_events = m.rx_count, m.rx_tap_event_count
        for _ in range(3):  # more frames queue up in the kernel; the device is not woken for them
            drv.send(request)
        wait_for(lambda: m.tx_packets_count >= 4, "the frames to go out")
        drv.on_loop(lambda: None)  # one more loop round
        assert (m.rx_count, m.rx_tap_event_count) == (reads, tap_events)
        assert drv.rxq.take_used() == []
        drv.post_rx(64, 1526)
        got: list[bytes] = []
        counts: list[tuple[int, int, int]] = []

        def take() -> None:  # on the loop, so that no frame arrives between the two looks
            got.extend(f for _, _, f in drv.frames())
            counts.append((m.rx_count, m.rx_packets_count, m.rx_fails))

        def answered() -> bool:
            drv.on_loop(take)
            return any(is_arp_reply_for(f, netns_tap.guest.gateway) for f in got)

        wait_for(answered, "the ARP reply")
        # Every frame read was delivered, the one read while there were no buffers too.
        assert counts[-1] == (len(got), len(got), 0) and len(got) > reads
    finally:
        drv.close()


def test_bad_tap_names_are_one_line_errors(netns_tap: NetSetup) -> None:
    assert netns_tap.netns is not None
    cases = {"": "empty", "x" * 16: "at most 15", "no/slash": "not a valid", "nosuchtap0": "does not exist",
             "lo": "not a TAP"}
    for name, words in cases.items():
        with pytest.raises(NetError) as info:
            run_in_netns(netns_tap.netns, partial(Tap.open, name))
        assert words in str(info.value) and "\n" not in str(info.value)
    tap = _open(netns_tap)
    try:
        with pytest.raises(NetError, match="in use"):
            _open(netns_tap)
    finally:
        tap.close()
    tap = _open(netns_tap)  # free again once closed
    tap.close()
    tap.close()  # idempotent
