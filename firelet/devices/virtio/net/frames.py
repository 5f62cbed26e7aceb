"""The virtio-net header and the checks on frames and chains (virtio 1.2 §5.1.6).

Pure functions over guest memory views: the device (:mod:`.device`) decides what
to count and when to stop; here is only what a frame or a chain is allowed to be.
"""

from __future__ import annotations

import os
import struct

from firelet.devices.virtio.queue import DescriptorChain
from firelet.memory.guest import GuestMemory

# §5.1.3 Feature bits.
VIRTIO_NET_F_CSUM = 0
VIRTIO_NET_F_GUEST_CSUM = 1
VIRTIO_NET_F_MAC = 5
VIRTIO_NET_F_GUEST_TSO4 = 7
VIRTIO_NET_F_GUEST_TSO6 = 8
VIRTIO_NET_F_GUEST_UFO = 10
VIRTIO_NET_F_HOST_TSO4 = 11
VIRTIO_NET_F_HOST_TSO6 = 12
VIRTIO_NET_F_HOST_UFO = 14
VIRTIO_NET_F_MRG_RXBUF = 15

# §5.1.6 struct virtio_net_hdr: flags u8, gso_type u8, hdr_len, gso_size, csum_start, csum_offset,
# num_buffers (le16 each). With VIRTIO_F_VERSION_1 num_buffers is always there: 12 bytes.
VNET_HDR = struct.Struct("<BBHHHHH")
VNET_HDR_LEN = VNET_HDR.size
NUM_BUFFERS_OFFSET = 10
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_UDP = 3
VIRTIO_NET_HDR_GSO_TCPV6 = 4
VIRTIO_NET_HDR_GSO_ECN = 0x80

#: The largest frame either way: a 64 KiB GSO packet with its Ethernet and VLAN headers
#: (the bound Firecracker uses), and with its header the largest buffer we move.
MAX_FRAME_LEN = 65550
MAX_BUFFER_LEN = VNET_HDR_LEN + MAX_FRAME_LEN

_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
#: Which host offload feature a driver must have accepted to send each GSO type (§5.1.6.2).
_GSO_FEATURE = {
    VIRTIO_NET_HDR_GSO_TCPV4: VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_HDR_GSO_TCPV6: VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_HDR_GSO_UDP: VIRTIO_NET_F_HOST_UFO,
}


def tx_frame(mem: GuestMemory, chain: DescriptorChain, acked: int) -> tuple[list[memoryview], int] | str:
    """The views (header + frame) of a transmit chain and their length, or why it is refused.

    A transmit chain is device-readable only (§5.1.6.2), holds at least a header and at
    most :data:`MAX_BUFFER_LEN` bytes, and its header asks only for offloads the driver
    negotiated; the kernel checks the rest of the header again when the TAP takes it.
    """
    if chain.error is not None:
        return chain.error.value
    views: list[memoryview] = []
    total = 0
    for desc in chain.descriptors:
        if desc.write:
            return "a device-writable buffer in a transmit chain"
        if desc.len:
            total += desc.len
            if total > MAX_BUFFER_LEN:
                return f"a frame longer than {MAX_BUFFER_LEN} bytes with its header"
            views.append(mem.view(desc.addr, desc.len))
    if total < VNET_HDR_LEN:
        return f"{total} bytes, shorter than the {VNET_HDR_LEN}-byte header"
    if len(views) > _IOV_MAX:
        return f"{len(views)} buffers, more than the {_IOV_MAX} one write takes"
    reason = _check_header(_head(views, VNET_HDR_LEN), acked)
    if reason is not None:
        return reason
    return views, total


def _check_header(header: bytes, acked: int) -> str | None:
    flags, gso_type = header[0], header[1]
    if flags & ~VIRTIO_NET_HDR_F_NEEDS_CSUM:
        return f"header flags {flags:#x} a driver may not send"
    if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM and not acked >> VIRTIO_NET_F_CSUM & 1:
        return "a partial checksum without VIRTIO_NET_F_CSUM"
    if gso_type != VIRTIO_NET_HDR_GSO_NONE:
        feature = _GSO_FEATURE.get(gso_type)
        if feature is None:
            return f"GSO type {gso_type:#x} is not one the device offered"
        if not acked >> feature & 1:
            return f"GSO type {gso_type:#x} without its feature (bit {feature})"
    return None


def _head(views: list[memoryview], length: int) -> bytes:
    """The first ``length`` bytes across ``views`` (which hold at least that many)."""
    out = bytearray()
    for view in views:
        out += view[: length - len(out)]
        if len(out) == length:
            break
    return bytes(out)
