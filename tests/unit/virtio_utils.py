"""A tiny virtio "guest driver" for device tests: rings and chains in real guest memory.

``DriverQueue`` lays out a split virtqueue (§2.7) in a ``GuestMemory`` the way a
driver would, hands out data buffers from a bump allocator, pushes descriptor
chains (direct or through an indirect table) and reads the used ring back. It
also writes raw, deliberately broken descriptors for hostile-driver tests.
Shared by every virtio device test (block now; net, vsock, rng, balloon later).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from firelet.devices.protocols import BusDevice
from firelet.devices.virtio import mmio
from firelet.devices.virtio.queue import (
    DESC_SIZE,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    Queue,
    avail_ring_size,
    used_ring_size,
)
from firelet.memory.guest import GuestMemory

MEM_SIZE = 4 << 20
#: Where rings go; data buffers start at DATA_START.
RING_START = 0x10000
DATA_START = 0x100000

#: A buffer to put in a chain: (guest address, length, device-writable).
Buffer = tuple[int, int, bool]


def new_memory(size: int = MEM_SIZE) -> GuestMemory:
    return GuestMemory.anonymous([(0, size)])


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


class DriverQueue:
    """The driver's side of one split virtqueue."""

    def __init__(self, mem: GuestMemory, size: int = 16, base: int = RING_START, data_start: int = DATA_START) -> None:
        self.mem = mem
        self.size = size
        self.desc_addr = base
        self.avail_addr = base + DESC_SIZE * size
        self.used_addr = _align(self.avail_addr + avail_ring_size(size), 4)
        self.end = self.used_addr + used_ring_size(size)
        self._data_next = data_start
        self._next_desc = 0
        self.avail_idx = 0
        self.used_seen = 0
        mem.write(base, bytes(self.end - base))

    # -- setup ---------------------------------------------------------------------
    def device_queue(self, max_size: int | None = None, features: int = 0) -> Queue:
        """A device-side ``Queue`` configured to this layout and marked ready."""
        queue = Queue(max_size or self.size)
        queue.size = self.size
        queue.desc_table, queue.avail_ring, queue.used_ring = self.desc_addr, self.avail_addr, self.used_addr
        queue.ready = True
        queue.set_features(features)
        return queue

    def alloc(self, length: int, data: bytes | None = None) -> int:
        """A fresh data buffer (16-byte aligned), optionally filled."""
        addr = self._data_next
        self._data_next = _align(addr + max(length, 1), 16)
        if data is not None:
            self.mem.write(addr, data)
        return addr

    # -- descriptors ---------------------------------------------------------------------
    def write_desc(self, index: int, addr: int, length: int, flags: int = 0, next_index: int = 0,
                   table: int | None = None) -> None:
        """Write one raw descriptor (no checks: tests use this to build hostile tables)."""
        base = self.desc_addr if table is None else table
        self.mem.write(base + DESC_SIZE * index, struct.pack("<QIHH", addr, length, flags, next_index))

    def _take_descs(self, count: int) -> list[int]:
        indexes = [(self._next_desc + i) % self.size for i in range(count)]
        self._next_desc = (self._next_desc + count) % self.size
        return indexes

    def add_chain(self, buffers: Sequence[Buffer], publish: bool = True) -> int:
        """Link ``buffers`` through the descriptor table; returns the head index."""
        indexes = self._take_descs(len(buffers))
        for i, (addr, length, write) in enumerate(buffers):
            last = i == len(buffers) - 1
            flags = (VIRTQ_DESC_F_WRITE if write else 0) | (0 if last else VIRTQ_DESC_F_NEXT)
            self.write_desc(indexes[i], addr, length, flags, 0 if last else indexes[i + 1])
        if publish:
            self.publish(indexes[0])
        return indexes[0]

    def add_indirect_chain(self, buffers: Sequence[Buffer], publish: bool = True) -> int:
        """Put ``buffers`` in an indirect table referenced by one descriptor."""
        table = self.alloc(DESC_SIZE * len(buffers))
        for i, (addr, length, write) in enumerate(buffers):
            last = i == len(buffers) - 1
            flags = (VIRTQ_DESC_F_WRITE if write else 0) | (0 if last else VIRTQ_DESC_F_NEXT)
            self.write_desc(i, addr, length, flags, 0 if last else i + 1, table=table)
        (head,) = self._take_descs(1)
        self.write_desc(head, table, DESC_SIZE * len(buffers), VIRTQ_DESC_F_INDIRECT)
        if publish:
            self.publish(head)
        return head

    # -- rings -------------------------------------------------------------------------------
    def publish(self, head: int) -> None:
        """Put ``head`` in the available ring and bump avail idx."""
        self.mem.write_u16(self.avail_addr + 4 + 2 * (self.avail_idx % self.size), head)
        self.set_avail_idx((self.avail_idx + 1) & 0xFFFF)

    def set_avail_idx(self, value: int) -> None:
        self.avail_idx = value & 0xFFFF
        self.mem.write_u16(self.avail_addr + 2, self.avail_idx)

    def set_avail_flags(self, flags: int) -> None:
        self.mem.write_u16(self.avail_addr, flags)

    def set_used_event(self, value: int) -> None:
        self.mem.write_u16(self.avail_addr + 4 + 2 * self.size, value & 0xFFFF)

    def avail_event(self) -> int:
        return self.mem.read_u16(self.used_addr + 4 + 8 * self.size)

    def used_idx(self) -> int:
        return self.mem.read_u16(self.used_addr + 2)

    def start_at(self, index: int) -> None:
        """Pretend both rings already wrapped to ``index`` (for wrap-around tests)."""
        self.set_avail_idx(index)
        self.used_seen = index & 0xFFFF
        self.mem.write_u16(self.used_addr + 2, index & 0xFFFF)

    def take_used(self) -> list[tuple[int, int]]:
        """(head, length) pairs the device returned since the last call."""
        out = []
        while self.used_seen != self.used_idx():
            slot = self.used_addr + 4 + 8 * (self.used_seen % self.size)
            out.append(struct.unpack("<II", self.mem.read(slot, 8)))
            self.used_seen = (self.used_seen + 1) & 0xFFFF
        return out


# -- virtio-mmio, as Linux's virtio_mmio driver programs it -------------------------------
def mmio_read32(transport: BusDevice, offset: int) -> int:
    buf = bytearray(4)
    transport.read(offset, memoryview(buf))
    return int.from_bytes(buf, "little")


def mmio_write32(transport: BusDevice, offset: int, value: int) -> None:
    transport.write(offset, (value & 0xFFFFFFFF).to_bytes(4, "little"))


def mmio_device_features(transport: BusDevice) -> int:
    mmio_write32(transport, mmio.DEVICE_FEATURES_SEL, 1)
    high = mmio_read32(transport, mmio.DEVICE_FEATURES)
    mmio_write32(transport, mmio.DEVICE_FEATURES_SEL, 0)
    return high << 32 | mmio_read32(transport, mmio.DEVICE_FEATURES)


def mmio_setup_queue(transport: BusDevice, index: int, drv: DriverQueue) -> None:
    mmio_write32(transport, mmio.QUEUE_SEL, index)
    assert mmio_read32(transport, mmio.QUEUE_READY) == 0
    assert mmio_read32(transport, mmio.QUEUE_NUM_MAX) >= drv.size
    mmio_write32(transport, mmio.QUEUE_NUM, drv.size)
    for low, addr in ((mmio.QUEUE_DESC_LOW, drv.desc_addr), (mmio.QUEUE_DRIVER_LOW, drv.avail_addr),
                      (mmio.QUEUE_DEVICE_LOW, drv.used_addr)):
        mmio_write32(transport, low, addr)
        mmio_write32(transport, low + 4, addr >> 32)
    mmio_write32(transport, mmio.QUEUE_READY, 1)


def mmio_init(transport: BusDevice, queues: Sequence[DriverQueue], features: int | None = None) -> int:
    """Linux's probe: reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK, queues, DRIVER_OK.

    ``features`` defaults to everything offered; returns the final status.
    """
    assert mmio_read32(transport, mmio.MAGIC_VALUE) == mmio.MMIO_MAGIC
    assert mmio_read32(transport, mmio.VERSION) == 2
    mmio_write32(transport, mmio.STATUS, 0)
    assert mmio_read32(transport, mmio.STATUS) == 0
    status = mmio.STATUS_ACKNOWLEDGE
    mmio_write32(transport, mmio.STATUS, status)
    status |= mmio.STATUS_DRIVER
    mmio_write32(transport, mmio.STATUS, status)
    offered = mmio_device_features(transport)
    wanted = offered if features is None else features
    for sel in (0, 1):
        mmio_write32(transport, mmio.DRIVER_FEATURES_SEL, sel)
        mmio_write32(transport, mmio.DRIVER_FEATURES, wanted >> (32 * sel))
    mmio_write32(transport, mmio.STATUS, status | mmio.STATUS_FEATURES_OK)
    status = mmio_read32(transport, mmio.STATUS)
    if not status & mmio.STATUS_FEATURES_OK:
        return status
    for index, drv in enumerate(queues):
        mmio_setup_queue(transport, index, drv)
    mmio_write32(transport, mmio.STATUS, status | mmio.STATUS_DRIVER_OK)
    return mmio_read32(transport, mmio.STATUS)


def copy_memory(mem: GuestMemory) -> GuestMemory:
    """A copy of guest RAM, as a snapshot would carry it to a fresh VM."""
    copy = GuestMemory.anonymous([(r.guest_addr, r.size) for r in mem.regions])
    for region in mem.regions:
        copy.write(region.guest_addr, mem.read(region.guest_addr, region.size))
    return copy
