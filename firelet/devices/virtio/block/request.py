"""One virtio-blk request, parsed from a descriptor chain (virtio 1.2 §5.2.6).

With VIRTIO_F_VERSION_1 the device must not assume how the driver split a
request into descriptors (§2.7.4), so the chain is read as two byte streams:
the device-readable one is the 16-byte header followed by OUT data, the
device-writable one is IN (or GET_ID) data followed by the 1-byte status. The
streams are lists of memoryviews into guest memory, so data moves between the
disk file and the guest with no copy.
"""

from __future__ import annotations

import enum
import struct

from firelet.devices.virtio.queue import DescriptorChain
from firelet.memory.guest import GuestMemory

# §5.2.6 request types.
VIRTIO_BLK_T_IN = 0
VIRTIO_BLK_T_OUT = 1
VIRTIO_BLK_T_FLUSH = 4
VIRTIO_BLK_T_GET_ID = 8
# §5.2.6 status values.
VIRTIO_BLK_S_OK = 0
VIRTIO_BLK_S_IOERR = 1
VIRTIO_BLK_S_UNSUPP = 2

SECTOR_SHIFT = 9
SECTOR_SIZE = 1 << SECTOR_SHIFT
#: §5.2.6: GET_ID returns a 20-byte, NUL-padded identifier.
VIRTIO_BLK_ID_BYTES = 20

_HEADER = struct.Struct("<IIQ")  # le32 type, le32 reserved, le64 sector


class Drop(enum.Enum):
    """Chains that cannot be answered with a status byte: returned with used length 0."""

    BAD_CHAIN = "the descriptor chain is malformed"
    SHORT_HEADER = "fewer than 16 device-readable bytes for the header"
    NO_STATUS = "no device-writable byte for the status"


class Request:
    """A parsed request; ``data`` runs in the direction its type needs."""

    __slots__ = ("type", "sector", "readable", "writable", "status")

    def __init__(self, type: int, sector: int, readable: list[memoryview], writable: list[memoryview],
                 status: memoryview) -> None:
        self.type = type
        self.sector = sector
        self.readable = readable  # device-readable bytes after the header (OUT data)
        self.writable = writable  # device-writable bytes before the status (IN / GET_ID data)
        self.status = status  # one byte

    @property
    def readable_len(self) -> int:
        return sum(len(v) for v in self.readable)

    @property
    def writable_len(self) -> int:
        return sum(len(v) for v in self.writable)


def parse(mem: GuestMemory, chain: DescriptorChain) -> Request | Drop:
    """Split a checked chain into header, data and status, or say why it is dropped."""
    if chain.error is not None:
        return Drop.BAD_CHAIN
    readable: list[memoryview] = []
    writable: list[memoryview] = []
    for desc in chain.descriptors:
        if desc.len:
            (writable if desc.write else readable).append(mem.view(desc.addr, desc.len))
    header, readable = _take_front(readable, _HEADER.size)
    if header is None:
        return Drop.SHORT_HEADER
    if not writable:
        return Drop.NO_STATUS
    last = writable[-1]
    status = last[len(last) - 1 :]
    if len(last) == 1:
        writable.pop()
    else:
        writable[-1] = last[: len(last) - 1]
    req_type, _reserved, sector = _HEADER.unpack(header)
    return Request(req_type, sector, readable, writable, status)


def _take_front(views: list[memoryview], count: int) -> tuple[bytes | None, list[memoryview]]:
    """The first ``count`` bytes of a stream (copied: it is only the header) and the rest."""
    taken = bytearray()
    for i, view in enumerate(views):
        need = count - len(taken)
        if len(view) >= need:
            taken += view[:need]
            rest = [view[need:]] if len(view) > need else []
            return bytes(taken), rest + views[i + 1 :]
        taken += view
    return None, []
