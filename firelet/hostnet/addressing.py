"""IPv4 addresses of a setup, and what a guest behind the TAP should be told.

The TAP gets the host side of a small subnet (172.16.0.1/30 by default, as in
Firecracker's network-setup guide); the guest takes the other usable address
and uses the TAP's as its gateway.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from firelet.hostnet.errors import BadInput

DEFAULT_TAP_ADDRESS = IPv4Interface("172.16.0.1/30")
# Where the host side of a namespace's veth pair is taken from when none is given:
# the first /30 here that no address or route of the host overlaps.
VETH_POOL = IPv4Network("10.200.0.0/16")
VETH_PREFIX = 30
# The guest interface the ip= boot argument names (the first virtio-net device).
GUEST_IFACE = "eth0"


def parse_interface(text: str, what: str = "address") -> IPv4Interface:
    """An IPv4 address with a prefix of at most /30, which is neither the subnet's network nor its broadcast."""
    wanted = f"invalid {what} {text!r}: give an IPv4 address with a prefix length, e.g. 172.16.0.1/30"
    if "/" not in text:
        raise BadInput(wanted)
    try:
        iface = IPv4Interface(text)
    except ValueError:
        raise BadInput(wanted) from None
    if iface.network.prefixlen > 30:
        raise BadInput(f"invalid {what} {text}: the prefix leaves no address for the other side; use /30 or shorter")
    if iface.ip in (iface.network.network_address, iface.network.broadcast_address):
        raise BadInput(f"invalid {what} {text}: that is the subnet's network or broadcast address; use a host address")
    return iface


def peer_address(iface: IPv4Interface) -> IPv4Interface:
    """The other side of a point-to-point subnet: its first host address that is not ``iface``'s."""
    for host in iface.network.hosts():
        if host != iface.ip:
            return IPv4Interface(f"{host}/{iface.network.prefixlen}")
    raise BadInput(f"{iface} leaves no address for the other side")  # unreachable for prefixes <= /30


def suggested_mac(guest: IPv4Address) -> str:
    """06:00 then the guest's four address bytes: locally administered, unicast, and unique per address."""
    return "06:00:" + ":".join(f"{b:02X}" for b in guest.packed)


def free_subnet(taken: Iterable[IPv4Network], pool: IPv4Network = VETH_POOL,
                prefix: int = VETH_PREFIX) -> IPv4Network:
    """The first ``/prefix`` of ``pool`` that overlaps none of ``taken``."""
    busy = [net for net in taken if net.overlaps(pool)]
    for candidate in pool.subnets(new_prefix=prefix):
        if not any(candidate.overlaps(net) for net in busy):
            return candidate
    raise BadInput(f"no free /{prefix} left in {pool} for the veth pair: give one with --veth-addr")


@dataclass(frozen=True)
class GuestSettings:
    """What the guest behind a TAP should use; ``gateway`` is the TAP's own address."""

    address: IPv4Interface
    gateway: IPv4Address
    mac: str
    iface: str = GUEST_IFACE

    @classmethod
    def for_tap(cls, tap_address: IPv4Interface) -> GuestSettings:
        guest = peer_address(tap_address)
        return cls(address=guest, gateway=tap_address.ip, mac=suggested_mac(guest.ip))

    @property
    def netmask(self) -> IPv4Address:
        return self.address.network.netmask

    def boot_arg(self) -> str:
        """The kernel's ip= argument (Documentation/admin-guide/nfs/nfsroot.rst):
        client::gateway:netmask::device:autoconf, autoconf off."""
        return f"ip={self.address.ip}::{self.gateway}:{self.netmask}::{self.iface}:off"

    def commands(self) -> list[str]:
        """The same settings as commands run inside the guest."""
        return [
            f"ip addr add {self.address} dev {self.iface}",
            f"ip link set {self.iface} up",
            f"ip route add default via {self.gateway} dev {self.iface}",
        ]
