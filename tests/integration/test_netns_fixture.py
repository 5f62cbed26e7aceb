"""The guest_netns fixture (tests/integration/netns.py) gives what the virtio-net tests stand on:
TAPs that open by name inside the namespace as the VMM opens them, and host addresses a program there can use."""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import sys
from collections.abc import Callable
from ipaddress import IPv4Interface

from firelet.hostnet import links

import netns
from netns import GuestNetns

guest_netns = netns.guest_netns  # the fixture: pytest finds it in this module under its name

TUNSETIFF, TUNGETIFF = 0x400454CA, 0x800454D2  # linux/if_tun.h
VMM_FLAGS = 0x0002 | 0x1000 | 0x4000  # IFF_TAP | IFF_NO_PI | IFF_VNET_HDR


def _open_as_the_vmm(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), VMM_FLAGS))
    ifr = bytearray(40)
    fcntl.ioctl(fd, TUNGETIFF, ifr)
    assert struct.unpack_from("H", ifr, 16)[0] & VMM_FLAGS == VMM_FLAGS
    return fd


def test_two_taps_with_host_endpoints_inside_the_namespace(guest_netns: Callable[..., GuestNetns]) -> None:
    net = guest_netns(taps=2)
    assert [t.name for t in net.taps] == ["tap0", "tap1"]
    assert [t.host for t in net.taps] == [IPv4Interface("192.0.2.1/30"), IPv4Interface("192.0.2.5/30")]
    assert [str(t.guest.address) for t in net.taps] == ["192.0.2.2/30", "192.0.2.6/30"]
    assert links.link_names(net.name) == ["lo", "tap0", "tap1"]
    for tap in net.taps:
        assert links.addresses(tap.name, net.name) == [tap.host]
        os.close(net.call(lambda name=tap.name: _open_as_the_vmm(name)))
    # A program started inside can listen on the host endpoint (the address is local only in there).
    code = f"import socket; s = socket.socket(); s.bind(('{net.taps[1].host.ip}', 0)); print(s.getsockname()[0])"
    done = subprocess.run(net.argv([sys.executable, "-c", code]), capture_output=True, text=True, check=True)
    assert done.stdout.strip() == str(net.taps[1].host.ip)
