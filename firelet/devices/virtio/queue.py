"""The split virtqueue, device side (virtio 1.2 §2.7 "Split Virtqueues").

The driver owns the descriptor table and the available ring, the device owns
the used ring; all three live in guest memory and are hostile input. Every
index and address read from them is checked here, and a bad chain comes back as
a :class:`DescriptorChain` whose ``error`` says what is wrong (a value the device
turns into a failed request), never as an exception.

Memory ordering: x86 keeps stores in order and loads in order, which covers
"write used entries, then used idx"; each index and entry is written with one
store (:meth:`GuestMemory.write_u16`), since the driver reads them meanwhile.
The store-then-load cases (used idx, then used_event; avail_event, then avail
idx) need a full barrier; a locked instruction is one, and acquiring a
``threading.Lock`` executes one.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
import threading
from collections.abc import Iterator
from typing import ClassVar, NamedTuple

from firelet.memory.guest import GuestMemory
from firelet.records import RecordError

# §2.7.5 The Virtqueue Descriptor Table.
VIRTQ_DESC_F_NEXT = 1
VIRTQ_DESC_F_WRITE = 2
VIRTQ_DESC_F_INDIRECT = 4
# §2.7.6 / §2.7.8 ring flags.
VIRTQ_AVAIL_F_NO_INTERRUPT = 1
VIRTQ_USED_F_NO_NOTIFY = 1
# §6 Reserved feature bits.
VIRTIO_RING_F_INDIRECT_DESC = 28
VIRTIO_RING_F_EVENT_IDX = 29

DESC_SIZE = 16  # le64 addr, le32 len, le16 flags, le16 next
_DESC = struct.Struct("<QIHH")
# §2.7 alignment requirements: table 16, available ring 2, used ring 4.
DESC_ALIGN = 16
AVAIL_ALIGN = 2
USED_ALIGN = 4
#: The largest queue size the split ring format allows (§2.7: "Queue Size ... 32768").
MAX_QUEUE_SIZE = 32768

_barrier_lock = threading.Lock()


def _full_barrier() -> None:
    """A full memory fence (see the module docstring)."""
    with _barrier_lock:
        pass


def avail_ring_size(size: int) -> int:
    """Bytes of the available ring: flags, idx, ring[size], used_event."""
    return 6 + 2 * size


def used_ring_size(size: int) -> int:
    """Bytes of the used ring: flags, idx, ring[size] of (id, len), avail_event."""
    return 6 + 8 * size


class ChainError(enum.Enum):
    """Why a descriptor chain was refused."""

    HEAD_OUT_OF_RANGE = "head index is not below the queue size"
    NEXT_OUT_OF_RANGE = "a next index is not below the table size"
    TOO_LONG = "the chain is longer than its table (a loop)"
    BAD_BUFFER = "a buffer is not inside guest memory"
    READ_AFTER_WRITE = "a device-readable buffer follows a device-writable one"
    INDIRECT_NOT_NEGOTIATED = "an indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC"
    BAD_INDIRECT_TABLE = "an indirect table that is empty, not a multiple of 16 or not in memory"
    NESTED_INDIRECT = "an indirect descriptor inside an indirect table"
    INDIRECT_WITH_NEXT = "an indirect descriptor that also has NEXT"


class Descriptor(NamedTuple):
    """One checked buffer: ``[addr, addr+len)`` lies in guest memory (a tuple: cheap to make)."""

    addr: int
    len: int
    write: bool  # device-writable


class DescriptorChain:
    """A popped chain: its head (for the used ring) and its checked buffers.

    With ``error`` set, ``descriptors`` holds the buffers checked before the
    fault; ``head_valid`` says whether the head may go back on the used ring.
    """

    __slots__ = ("head_index", "descriptors", "error", "head_valid")

    def __init__(self, head_index: int, descriptors: list[Descriptor] | None = None,
                 error: ChainError | None = None, head_valid: bool = True) -> None:
        self.head_index = head_index
        self.descriptors: list[Descriptor] = [] if descriptors is None else descriptors
        self.error = error
        self.head_valid = head_valid

    def __repr__(self) -> str:
        return (f"DescriptorChain(head_index={self.head_index}, descriptors={self.descriptors!r}, "
                f"error={self.error!r}, head_valid={self.head_valid})")

    def __iter__(self) -> Iterator[Descriptor]:
        return iter(self.descriptors)

    def __len__(self) -> int:
        return len(self.descriptors)

    def readable(self) -> list[Descriptor]:
        return [d for d in self.descriptors if not d.write]

    def writable(self) -> list[Descriptor]:
        return [d for d in self.descriptors if d.write]


@dataclasses.dataclass(frozen=True)
class QueueState:
    """A queue as the driver configured it and the device's position in its rings.

    The rings themselves are guest memory, saved with it; ``signalled_used`` is
    None until the first notification decision.
    """

    VERSION: ClassVar[int] = 1

    max_size: int
    size: int
    ready: bool
    desc_table: int
    avail_ring: int
    used_ring: int
    event_idx: bool
    indirect: bool
    next_avail: int
    next_used: int
    signalled_used: int | None
    broken: bool


class Queue:
    """One split virtqueue's configuration and the device's position in it."""

    def __init__(self, max_size: int) -> None:
        if not 0 < max_size <= MAX_QUEUE_SIZE or max_size & (max_size - 1):
            raise ValueError(f"queue max size {max_size} is not a power of two up to {MAX_QUEUE_SIZE}")
        self.max_size = max_size
        self.reset()

    def reset(self) -> None:
        """Back to the state after a device reset (§2.1.2 / §4.2.2)."""
        self.size = self.max_size
        self.ready = False
        self.desc_table = 0
        self.avail_ring = 0
        self.used_ring = 0
        self.event_idx = False
        self.indirect = False
        self.next_avail = 0
        self.next_used = 0
        self.signalled_used: int | None = None
        self.broken = False  # the driver misbehaved beyond one request: needs reset

    def save_state(self) -> QueueState:
        return QueueState(
            self.max_size, self.size, self.ready, self.desc_table, self.avail_ring, self.used_ring,
            self.event_idx, self.indirect, self.next_avail, self.next_used, self.signalled_used, self.broken,
        )

    def restore_state(self, state: QueueState) -> None:
        """Take ``state`` over; the transport checks the rings of an active device as at DRIVER_OK."""
        if state.max_size != self.max_size:
            raise RecordError(f"saved queue has {state.max_size} entries at most, this device's queue {self.max_size}")
        for name in ("size", "desc_table", "avail_ring", "used_ring"):
            if not 0 <= getattr(state, name) < 1 << 64:
                raise RecordError(f"saved queue {name} {getattr(state, name)} is out of range")
        for name in ("next_avail", "next_used", "signalled_used"):
            value = getattr(state, name)
            if value is not None and not 0 <= value <= 0xFFFF:
                raise RecordError(f"saved queue {name} {value} is not a 16-bit ring index")
        self.size, self.ready = state.size, state.ready
        self.desc_table, self.avail_ring, self.used_ring = state.desc_table, state.avail_ring, state.used_ring
        self.event_idx, self.indirect = state.event_idx, state.indirect
        self.next_avail, self.next_used, self.signalled_used = state.next_avail, state.next_used, state.signalled_used
        self.broken = state.broken

    def set_features(self, features: int) -> None:
        """Take the ring features the driver accepted."""
        self.event_idx = bool(features >> VIRTIO_RING_F_EVENT_IDX & 1)
        self.indirect = bool(features >> VIRTIO_RING_F_INDIRECT_DESC & 1)

    def is_valid(self, mem: GuestMemory) -> bool:
        """Whether the driver's configuration is usable (§2.7 size and alignment rules)."""
        size = self.size
        if not self.ready or not 0 < size <= self.max_size or size & (size - 1):
            return False
        if self.desc_table % DESC_ALIGN or self.avail_ring % AVAIL_ALIGN or self.used_ring % USED_ALIGN:
            return False
        return (
            mem.check_range(self.desc_table, DESC_SIZE * size)
            and mem.check_range(self.avail_ring, avail_ring_size(size))
            and mem.check_range(self.used_ring, used_ring_size(size))
        )

    # -- the available side --------------------------------------------------
    def pending(self, mem: GuestMemory) -> int:
        """How many chains the driver has made available that we have not popped."""
        return (mem.read_u16(self.avail_ring + 2) - self.next_avail) & 0xFFFF

    def pop(self, mem: GuestMemory) -> DescriptorChain | None:
        """The next available chain, or None if there is none (or the ring is broken)."""
        if self.broken:
            return None
        pending = self.pending(mem)
        if pending == 0 and self.event_idx:
            # Ask to be notified at the next addition, then look again: the driver
            # may have added a chain before it saw avail_event (§2.7.10).
            mem.write_u16(self.used_ring + 4 + 8 * self.size, self.next_avail)
            _full_barrier()
            pending = self.pending(mem)
        if pending == 0:
            return None
        if pending > self.size:
            self.broken = True  # avail idx jumped past entries we have not consumed
            return None
        slot = self.avail_ring + 4 + 2 * (self.next_avail % self.size)
        head = mem.read_u16(slot)
        self.next_avail = (self.next_avail + 1) & 0xFFFF
        return self._parse(mem, head)

    def undo_pop(self) -> None:
        """Put the last popped chain back, to be popped again later (a rate-limited device).

        Only right after :meth:`pop` returned a chain; the driver's view does not change,
        since the chain was never used.
        """
        self.next_avail = (self.next_avail - 1) & 0xFFFF

    def _parse(self, mem: GuestMemory, head: int) -> DescriptorChain:
        chain = DescriptorChain(head)
        if head >= self.size:
            chain.error = ChainError.HEAD_OUT_OF_RANGE
            chain.head_valid = False
            return chain
        table = mem.view(self.desc_table, DESC_SIZE * self.size)
        index, seen, out = head, 0, chain.descriptors
        seen_write = False
        while True:
            if seen >= self.size:
                chain.error = ChainError.TOO_LONG
                return chain
            seen += 1
            addr, length, flags, nxt = _DESC.unpack_from(table, DESC_SIZE * index)
            if flags & VIRTQ_DESC_F_INDIRECT:
                chain.error = self._parse_indirect(mem, addr, length, flags, out, seen_write)
                return chain
            error = _check(mem, addr, length, flags, out, seen_write)
            if error is not None:
                chain.error = error
                return chain
            seen_write = out[-1].write
            if not flags & VIRTQ_DESC_F_NEXT:
                return chain
            if nxt >= self.size:
                chain.error = ChainError.NEXT_OUT_OF_RANGE
                return chain
            index = nxt

    def _parse_indirect(
        self, mem: GuestMemory, addr: int, length: int, flags: int, out: list[Descriptor], seen_write: bool
    ) -> ChainError | None:
        """Follow an indirect table (§2.7.5.3); it must end the main chain."""
        if not self.indirect:
            return ChainError.INDIRECT_NOT_NEGOTIATED
        if flags & VIRTQ_DESC_F_NEXT:
            return ChainError.INDIRECT_WITH_NEXT
        if length == 0 or length % DESC_SIZE or not mem.check_range(addr, length):
            return ChainError.BAD_INDIRECT_TABLE
        count = length // DESC_SIZE
        table = mem.view(addr, length)
        index = 0
        for _ in range(count):
            d_addr, d_len, d_flags, nxt = _DESC.unpack_from(table, DESC_SIZE * index)
            if d_flags & VIRTQ_DESC_F_INDIRECT:
                return ChainError.NESTED_INDIRECT
            error = _check(mem, d_addr, d_len, d_flags, out, seen_write)
            if error is not None:
                return error
            seen_write = out[-1].write
            if not d_flags & VIRTQ_DESC_F_NEXT:
                return None
            if nxt >= count:
                return ChainError.NEXT_OUT_OF_RANGE
            index = nxt
        return ChainError.TOO_LONG

    # -- the used side -------------------------------------------------------
    def add_used(self, mem: GuestMemory, head_index: int, length: int) -> None:
        """Return a chain to the driver: the used element, then the used idx (§2.7.8)."""
        if not 0 <= head_index < self.size:
            return  # a device bug; never write a head the driver did not give us
        slot = self.used_ring + 4 + 8 * (self.next_used % self.size)
        mem.write_u64(slot, _used_elem(head_index, length))
        self.next_used = (self.next_used + 1) & 0xFFFF
        # x86 keeps these two stores in order, so the driver never sees idx before the entry.
        mem.write_u16(self.used_ring + 2, self.next_used)

    def add_used_many(self, mem: GuestMemory, entries: list[tuple[int, int]]) -> None:
        """Return several chains at once: all their used elements, then one used idx store.

        A receive frame spread over merged buffers must appear whole: a driver polling the
        ring must never see its first buffer (which announces the count) before the others.
        """
        index = self.next_used
        for head_index, length in entries:
            if not 0 <= head_index < self.size:
                continue  # a device bug; never write a head the driver did not give us
            slot = self.used_ring + 4 + 8 * (index % self.size)
            mem.write_u64(slot, _used_elem(head_index, length))
            index = (index + 1) & 0xFFFF
        self.next_used = index
        mem.write_u16(self.used_ring + 2, index)

    def needs_notification(self, mem: GuestMemory) -> bool:
        """Whether to interrupt the driver for the entries added since the last call.

        With VIRTIO_RING_F_EVENT_IDX, interrupt only when used idx has passed the
        driver's used_event (§2.7.10, ``vring_need_event``); otherwise unless the
        driver set VIRTQ_AVAIL_F_NO_INTERRUPT (§2.7.7).
        """
        new = self.next_used
        old = self.signalled_used
        if old == new:
            return False
        self.signalled_used = new
        _full_barrier()  # our used idx store must be visible before we read the driver's fields
        if self.event_idx:
            if old is None:
                return True
            used_event = mem.read_u16(self.avail_ring + 4 + 2 * self.size)
            return (new - used_event - 1) & 0xFFFF < (new - old) & 0xFFFF
        return not mem.read_u16(self.avail_ring) & VIRTQ_AVAIL_F_NO_INTERRUPT


def _used_elem(head_index: int, length: int) -> int:
    """A used element (§2.7.8: le32 id, le32 len) as one 64-bit value, to be stored at once."""
    return (length & 0xFFFFFFFF) << 32 | head_index


def _check(
    mem: GuestMemory, addr: int, length: int, flags: int, out: list[Descriptor], seen_write: bool
) -> ChainError | None:
    """Check one direct descriptor and append it to ``out``."""
    write = bool(flags & VIRTQ_DESC_F_WRITE)
    if seen_write and not write:
        return ChainError.READ_AFTER_WRITE
    if not mem.check_range(addr, length):
        return ChainError.BAD_BUFFER
    out.append(Descriptor(addr, length, write))
    return None
