"""A network namespace made for one test: TAPs for a guest, and the host's end of each inside it.

Tests that give a guest a network import the fixture from here::

    import netns
    guest_netns = netns.guest_netns  # the fixture: pytest finds it in the test module under its name

    def test_x(guest_netns, kernel, rootfs):
        net = guest_netns(taps=2)
        vmm = subprocess.Popen(net.argv(["firelet", "run", "--net", f"tap={net.taps[0].name}", ...]))
        server = subprocess.Popen(net.argv(["python3", "-m", "http.server", "--bind", str(net.taps[0].host.ip)]))

Each TAP gets a /30 of 192.0.2.0/24 (documentation addresses, RFC 5737): the
host side is the TAP's own address, inside the namespace, and the guest takes
the other one. Nothing is routed out of the namespace, so the guest can reach
only programs the test runs in there; everything is removed after the test.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv4Network
from typing import TypeVar

import pytest

from firelet.hostnet import GuestSettings, links
from firelet.hostnet.netns import create_netns, netns_exists, netns_path, remove_netns, run_in_netns

#: Where the TAPs' subnets come from: documentation addresses, one /30 per TAP.
TAP_POOL = IPv4Network("192.0.2.0/24")
_counter = itertools.count()

T = TypeVar("T")


@dataclass(frozen=True)
class GuestTap:
    """One TAP: ``host`` is its address in the namespace (where a host program listens), ``guest`` the rest."""

    name: str
    host: IPv4Interface
    guest: GuestSettings


@dataclass
class GuestNetns:
    name: str
    taps: list[GuestTap] = field(default_factory=list)

    @property
    def path(self) -> str:
        return str(netns_path(self.name))

    def argv(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the namespace; only the network changes (same files, same /sys as the test)."""
        return ["nsenter", f"--net={self.path}", *argv]

    def call(self, func: Callable[[], T]) -> T:
        """``func()`` on a thread inside the namespace: sockets and TAP fds it opens belong there."""
        return run_in_netns(self.name, func)


def make_guest_netns(taps: int = 1, *, owner: int | None = None) -> GuestNetns:
    """A new namespace with ``taps`` TAPs (tap0, tap1, ...), each up with its host address."""
    if not 1 <= taps <= 64:
        raise ValueError(f"taps={taps}: give 1 to 64")
    name = f"flit{os.getpid() % 100000}{next(_counter)}"
    create_netns(name)
    net = GuestNetns(name)
    try:
        links.set_up("lo", name)
        for index, subnet in zip(range(taps), TAP_POOL.subnets(new_prefix=30), strict=False):
            host = IPv4Interface(f"{next(subnet.hosts())}/{subnet.prefixlen}")
            tap = f"tap{index}"
            links.create_tap(tap, netns=name, owner=owner)
            links.add_address(tap, host, name)
            links.set_up(tap, name)
            net.taps.append(GuestTap(tap, host, GuestSettings.for_tap(host)))
    except BaseException:
        remove_guest_netns(net)
        raise
    return net


def remove_guest_netns(net: GuestNetns) -> None:
    """Delete the TAPs, then the namespace (whose last user, the VMM, should have exited by now)."""
    for tap in net.taps:
        links.delete_link(tap.name, net.name)
    remove_netns(net.name)
    assert not netns_exists(net.name)


@pytest.fixture
def guest_netns() -> Iterator[Callable[..., GuestNetns]]:
    """A factory: ``guest_netns(taps=N)`` makes a namespace; all it made is removed after the test."""
    made: list[GuestNetns] = []

    def make(taps: int = 1, *, owner: int | None = None) -> GuestNetns:
        net = make_guest_netns(taps, owner=owner)
        made.append(net)
        return net

    yield make
    for net in made:
        remove_guest_netns(net)
