"""Links, addresses and routes, in this namespace or a named one.

TAP devices are made with the tun driver's ioctls (rtnetlink cannot make them);
everything else goes through pyroute2's netlink, so no ``ip`` output is parsed.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from firelet.hostnet.checks import TUN_DEVICE
from firelet.hostnet.errors import HostNetError, NameTaken
from firelet.hostnet.netns import is_missing, netns_exists, rtnl, run_in_netns

# linux/if_tun.h
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOWNER = 0x400454CC
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
# struct ifreq (linux/if.h): a 16-byte name, then a union whose first member here is short ifr_flags.
_IFREQ = struct.Struct("16sH22x")
# What a persistent TAP is made with; the VMM opens it again with the same flags.
TAP_FLAGS = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR


def _where(netns: str | None) -> str:
    return f" in network namespace {netns!r}" if netns else ""


def _describe(exc: BaseException) -> str:
    """The errno text of an OSError or a pyroute2 NetlinkError (whose args are (code, text))."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    args: tuple[object, ...] = exc.args
    if len(args) >= 2 and isinstance(args[1], str):
        return args[1]
    return str(exc) or type(exc).__name__


def link_exists(name: str, netns: str | None = None) -> bool:
    """Is there a link ``name`` in that namespace (a missing namespace has none)?"""
    if netns is not None and not netns_exists(netns):
        return False

    def lookup() -> bool:
        try:
            socket.if_nametoindex(name)  # its ioctl socket is made in the calling thread's namespace
        except OSError:
            return False
        return True

    return run_in_netns(netns, lookup)


def create_tap(name: str, *, netns: str | None = None, owner: int | None = None) -> None:
    """A persistent TAP ``name`` (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR), optionally owned by uid ``owner``.

    Refuses a name that exists: TUNSETIFF on an existing TAP would attach to it rather than fail.
    """
    if link_exists(name, netns):
        raise NameTaken(f"interface {name!r} exists already{_where(netns)}: pick another --tap name")

    def make() -> None:
        fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(name.encode(), TAP_FLAGS))
            if owner is not None:
                fcntl.ioctl(fd, TUNSETOWNER, owner)
            fcntl.ioctl(fd, TUNSETPERSIST, 1)
        finally:
            os.close(fd)

    try:
        run_in_netns(netns, make)
    except OSError as exc:
        raise HostNetError(f"cannot make TAP {name!r}{_where(netns)}: {_describe(exc)}") from None


def _index(ipr: Any, name: str, netns: str | None) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise HostNetError(f"interface {name!r} is not there{_where(netns)}")
    return int(found[0])


def create_veth(host_end: str, netns_end: str, netns: str) -> None:
    """A veth pair: ``host_end`` here, ``netns_end`` made directly inside ``netns``."""
    if link_exists(host_end):
        raise NameTaken(f"interface {host_end!r} exists already: pick another setup name")
    with rtnl(None) as ipr:
        try:
            ipr.link("add", ifname=host_end, kind="veth", peer={"ifname": netns_end, "net_ns_fd": netns})
        except Exception as exc:  # pyroute2's NetlinkError carries the kernel's errno
            raise HostNetError(f"cannot make veth pair {host_end}/{netns_end}: {_describe(exc)}") from None


def add_address(name: str, address: IPv4Interface, netns: str | None = None) -> None:
    with rtnl(netns) as ipr:
        index = _index(ipr, name, netns)
        try:
            ipr.addr("add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen)
        except Exception as exc:
            raise HostNetError(f"cannot add {address} to {name}{_where(netns)}: {_describe(exc)}") from None


def set_up(name: str, netns: str | None = None) -> None:
    with rtnl(netns) as ipr:
        index = _index(ipr, name, netns)
        try:
            ipr.link("set", index=index, state="up")
        except Exception as exc:
            raise HostNetError(f"cannot bring {name} up{_where(netns)}: {_describe(exc)}") from None


def add_default_route(gateway: IPv4Address, netns: str | None = None) -> None:
    with rtnl(netns) as ipr:
        try:
            ipr.route("add", dst="0.0.0.0/0", gateway=str(gateway))
        except Exception as exc:
            raise HostNetError(f"cannot add a default route via {gateway}{_where(netns)}: {_describe(exc)}") from None


def delete_link(name: str, netns: str | None = None) -> bool:
    """Delete link ``name``; False when it (or its namespace) is already gone."""
    if netns is not None and not netns_exists(netns):
        return False
    with rtnl(netns) as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return False
        try:
            ipr.link("del", index=found[0])
        except Exception as exc:
            if is_missing(exc):
                return False
            raise HostNetError(f"cannot delete {name}{_where(netns)}: {_describe(exc)}") from None
    return True


def link_names(netns: str | None = None) -> list[str]:
    with rtnl(netns) as ipr:
        return sorted(str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links())


def addresses(name: str, netns: str | None = None) -> list[IPv4Interface]:
    """The IPv4 addresses on link ``name``."""
    with rtnl(netns) as ipr:
        index = _index(ipr, name, netns)
        return [IPv4Interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
                for a in ipr.get_addr(index=index, family=socket.AF_INET)]


def networks_in_use(netns: str | None = None) -> list[IPv4Network]:
    """Every IPv4 subnet this namespace has an address in or a route to (the default route aside)."""
    nets: list[IPv4Network] = []
    with rtnl(netns) as ipr:
        for a in ipr.get_addr(family=socket.AF_INET):
            nets.append(IPv4Interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}").network)
        for r in ipr.get_routes(family=socket.AF_INET, table=254):
            dst = r.get_attr("RTA_DST")
            if dst is not None and r["dst_len"] > 0:
                nets.append(IPv4Network(f"{dst}/{r['dst_len']}", strict=False))
    return nets
