"""A TAP made by firelet.hostnet works as the VMM will use it: opened by name inside its namespace with
IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, frames written to the fd reach the namespace's kernel and its answers come back.

All traffic stays between the test's own fd and namespaces the test made (documentation addresses only).
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

import pytest

from firelet.hostnet import NetSetup, NetSpec, list_setups, up
from firelet.hostnet.netns import create_netns, netns_exists, netns_path, remove_netns, rtnl, run_in_netns

from hostnet_utils import require_root_and_tun, setups_removed_after, unique
from net_frames import (
    BROADCAST,
    ETH_P_ARP,
    ETH_P_IP,
    IFF_NO_PI,
    IFF_TAP,
    IFF_VNET_HDR,
    arp,
    checksum,
    ethernet,
    exchange,
    icmp_echo,
    ipv4,
    is_arp_reply_for,
    is_icmp_echo_reply,
    mac_bytes,
    open_tap,
    tap_flags,
)

REPO = Path(__file__).resolve().parents[2]
require_root_and_tun()


def tap_mac(name: str, netns: str) -> bytes:
    with rtnl(netns) as ipr:
        [link] = ipr.get_links(ipr.link_lookup(ifname=name)[0])
        return mac_bytes(link.get_attr("IFLA_ADDRESS"))


class Guest:
    """The guest side of a TAP: its fd, and the guest's addresses (as a virtio-net driver would have them)."""

    def __init__(self, setup: NetSetup) -> None:
        assert setup.netns is not None
        self.fd = run_in_netns(setup.netns, lambda: open_tap(setup.tap))
        self.ip = setup.guest.address.ip
        self.mac = mac_bytes(setup.guest.mac)
        self.gateway = setup.guest.gateway
        self.gateway_mac = b""
        self.pings_sent = 0

    def resolve_gateway(self) -> bytes:
        """ARP for the gateway (the TAP's address); the namespace's kernel answers."""
        request = ethernet(BROADCAST, self.mac, ETH_P_ARP, arp(1, self.mac, self.ip, bytes(6), self.gateway))
        reply, _ = exchange(self.fd, request, lambda f: is_arp_reply_for(f, self.gateway))
        assert reply[0:6] == self.mac and reply[32:38] == self.mac and reply[38:42] == self.ip.packed
        self.gateway_mac = reply[22:28]
        return self.gateway_mac

    def ping(self, dst: IPv4Address, ident: int, seq: int, data: bytes) -> bytes:
        """Send an ICMP echo request through the gateway (again each second until answered); the reply's
        IP packet. ``self.pings_sent`` counts the requests."""
        packet = ipv4(self.ip, dst, 1, icmp_echo(ident, seq, data), ident=seq)
        reply, self.pings_sent = exchange(self.fd, ethernet(self.gateway_mac, self.mac, ETH_P_IP, packet),
                                          lambda f: is_icmp_echo_reply(f, ident))
        assert reply[0:6] == self.mac and reply[6:12] == self.gateway_mac
        return reply[14:]

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    yield from setups_removed_after(tmp_path / "state")


def test_the_tap_opens_with_a_vnet_header_and_the_namespace_answers_arp_and_ping(state_dir: Path) -> None:
    name = unique("fl")
    setup = up(NetSpec(name=name, netns=name, tap_address=IPv4Interface("192.0.2.1/30"), veth=False), state_dir)
    guest = Guest(setup)
    try:
        assert tap_flags(guest.fd) & (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR) == IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
        assert guest.resolve_gateway() == tap_mac("tap0", name)
        data = bytes(range(56))
        reply = guest.ping(IPv4Address("192.0.2.1"), ident=0x4242, seq=7, data=data)
        assert checksum(reply[:20]) == 0 and checksum(reply[20:]) == 0  # both checksums are whole
        assert reply[12:16] == IPv4Address("192.0.2.1").packed and reply[16:20] == guest.ip.packed
        assert struct.unpack("!HH", reply[24:28]) == (0x4242, 7) and reply[28:] == data
    finally:
        guest.close()


def _ip(netns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", netns, *args], check=True, capture_output=True)


@pytest.fixture
def host_and_world() -> Iterator[tuple[str, str]]:
    """Two namespaces joined by a veth pair: "host" (203.0.113.1 on wan0) and "world" (203.0.113.2):
    a stand-in for the machine and the network beyond its uplink, so NAT can be shown end to end."""
    host, world = unique("flh"), unique("flw")
    create_netns(host)
    try:
        create_netns(world)
        try:
            _ip(host, "link", "add", "wan0", "type", "veth", "peer", "name", "wan0", "netns", world)
            _ip(host, "addr", "add", "203.0.113.1/24", "dev", "wan0")
            _ip(world, "addr", "add", "203.0.113.2/24", "dev", "wan0")
            for ns in (host, world):
                _ip(ns, "link", "set", "wan0", "up")
            yield host, world
        finally:
            remove_netns(world)
    finally:
        remove_netns(host)


def test_a_guest_reaches_past_the_host_through_both_nats_and_the_answer_comes_back(
        tmp_path: Path, host_and_world: tuple[str, str]) -> None:
    """The guest's ping to 203.0.113.2 leaves its namespace as the veth address and the host as wan0's."""
    host, world = host_and_world
    name = unique("fl")
    state = tmp_path / "state"
    cli = ["nsenter", f"--net={netns_path(host)}", sys.executable, "-m", "firelet.cli.main", "net"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    made = subprocess.run([*cli, "up", name, "--netns", name, "--addr", "192.0.2.1/30", "--veth-addr",
                           "198.51.100.1/30", "--nat-out", "wan0", "--state-dir", str(state)],
                          capture_output=True, text=True, env=env, check=False)
    assert made.returncode == 0, made.stderr
    try:
        setup = list_setups(state)[0]
        guest = Guest(setup)
        try:
            guest.resolve_gateway()
            reply = guest.ping(IPv4Address("203.0.113.2"), ident=0x5151, seq=1, data=b"through two NATs")
        finally:
            guest.close()
        assert reply[12:16] == IPv4Address("203.0.113.2").packed and reply[16:20] == guest.ip.packed
        assert reply[28:] == b"through two NATs"
        # Each side's masquerade rule counted the request (once per request sent: NAT sees each new flow).
        for ns, table in ((name, "firelet"), (host, f"firelet-{name}")):
            rules = subprocess.run(["nsenter", f"--net={netns_path(ns)}", "nft", "list", "table", "ip", table],
                                   capture_output=True, text=True, check=True).stdout
            counted = [int(n) for n in re.findall(r"counter packets (\d+) ", rules)]
            assert counted and all(1 <= n <= guest.pings_sent for n in counted), rules
    finally:
        gone = subprocess.run([*cli, "down", name, "--state-dir", str(state)], capture_output=True, text=True,
                              env=env, check=False)
    assert gone.returncode == 0, gone.stderr
    assert not netns_exists(name)
    assert world  # the world namespace is the fixture's to remove
