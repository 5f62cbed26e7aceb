"""A TAP device opened by name, as the virtio-net device's host end.

The TAP must exist already (made by ``firelet net up``, ``ip tuntap`` or a
jailer), in the network namespace of the thread that opens it. It is opened
with ``IFF_TAP | IFF_NO_PI | IFF_VNET_HDR``: every frame read or written
carries a ``struct virtio_net_hdr`` first (virtio 1.2 §5.1.6), whose size and
the offloads the kernel may use toward us are set once the driver has chosen
its features (:meth:`Tap.set_vnet_hdr_size`, :meth:`Tap.set_offload`).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct

from firelet.errors import FireletError

TUN_DEVICE = "/dev/net/tun"
# linux/if.h: an interface name holds at most IFNAMSIZ - 1 bytes and a NUL.
IFNAMSIZ = 16
# linux/if_tun.h ioctls (_IOW('T', nr, int) / unsigned int).
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TAP_FLAGS = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
# TUNSETOFFLOAD flags: what the kernel may hand us unsegmented / without a checksum.
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_UFO = 0x10
# struct ifreq: a 16-byte name, then a union whose first member here is short ifr_flags.
_IFREQ = struct.Struct("16sH22x")


class NetError(FireletError):
    """A network interface's host side cannot be used."""


def check_name(name: str) -> bytes:
    """The name as the kernel takes it, or a NetError saying why it cannot be one."""
    raw = name.encode(errors="replace")
    if not raw:
        raise NetError("host_dev_name is empty; give the name of an existing TAP device")
    if len(raw) >= IFNAMSIZ:
        raise NetError(f"host_dev_name {name!r} is {len(raw)} bytes long; an interface name has at most "
                       f"{IFNAMSIZ - 1}")
    if any(c in raw for c in b"\0/ \t\n:") or raw in (b".", b".."):
        raise NetError(f"host_dev_name {name!r} is not a valid interface name")
    return raw


class Tap:
    """An open TAP: a non-blocking, close-on-exec fd and the interface's name."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd = fd
        self.name = name

    @classmethod
    def open(cls, host_dev_name: str) -> Tap:
        """Attach to the existing TAP ``host_dev_name`` in the calling thread's network namespace."""
        raw = check_name(host_dev_name)
        try:
            socket.if_nametoindex(host_dev_name)
        except OSError:
            # TUNSETIFF would quietly make a new, unconnected TAP: refuse instead.
            raise NetError(f"TAP device {host_dev_name!r} does not exist in this network namespace; create it "
                           "first (e.g. `firelet net up` or `ip tuntap add dev NAME mode tap`)") from None
        try:
            fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise NetError(f"cannot open {TUN_DEVICE} for TAP {host_dev_name!r}: {exc.strerror}; load the tun "
                           "module and make the device node available") from None
        try:
            fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(raw, TAP_FLAGS))
        except OSError as exc:
            os.close(fd)
            raise NetError(_open_failure(host_dev_name, exc)) from None
        return cls(fd, host_dev_name)

    def set_vnet_hdr_size(self, n: int) -> None:
        """How many header bytes precede each frame both ways (10 legacy, 12 with num_buffers)."""
        fcntl.ioctl(self.fd, TUNSETVNETHDRSZ, struct.pack("i", n))

    def set_offload(self, flags: int) -> None:
        """TUN_F_* offloads the kernel may leave to us (and so to the driver) on frames it sends."""
        fcntl.ioctl(self.fd, TUNSETOFFLOAD, flags)

    def close(self) -> None:
        """Detach from the TAP (idempotent); the interface itself stays."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __repr__(self) -> str:
        return f"Tap(fd={self.fd}, name={self.name!r})"


def _open_failure(name: str, exc: OSError) -> str:
    if exc.errno == errno.EBUSY:
        return f"TAP device {name!r} is in use by another process; give each microVM its own TAP"
    if exc.errno in (errno.EPERM, errno.EACCES):
        return (f"no permission to attach to TAP device {name!r}; run as its owner (`ip tuntap add ... user UID`) "
                "or with CAP_NET_ADMIN")
    if exc.errno == errno.EINVAL:
        return (f"{name!r} is not a TAP device that accepts IFF_TAP|IFF_NO_PI|IFF_VNET_HDR (a TUN, a multi-queue "
                "TAP or another kind of link); make it with `ip tuntap add dev NAME mode tap`")
    return f"cannot attach to TAP device {name!r}: {exc.strerror}"
