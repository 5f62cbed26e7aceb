"""The split virtqueue against a driver that is sometimes hostile."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firelet.devices.virtio.queue import (
    VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
    VIRTQ_AVAIL_F_NO_INTERRUPT,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    ChainError,
    Descriptor,
    Queue,
)
from firelet.memory.guest import GuestMemory

from concurrent_reader import watch_while_writing
from virtio_utils import MEM_SIZE, DriverQueue, new_memory

INDIRECT = 1 << VIRTIO_RING_F_INDIRECT_DESC
EVENT_IDX = 1 << VIRTIO_RING_F_EVENT_IDX


@pytest.fixture
def mem():
    memory = new_memory()
    yield memory
    memory.close()


def test_pop_returns_chain_in_order_with_directions(mem) -> None:
    drv = DriverQueue(mem)
    q = drv.device_queue()
    a, b, c = drv.alloc(16), drv.alloc(512), drv.alloc(1)
    head = drv.add_chain([(a, 16, False), (b, 512, True), (c, 1, True)])
    chain = q.pop(mem)
    assert chain is not None and chain.error is None and chain.head_index == head
    assert list(chain) == [Descriptor(a, 16, False), Descriptor(b, 512, True), Descriptor(c, 1, True)]
    assert chain.readable() == [Descriptor(a, 16, False)]
    assert q.pop(mem) is None


def test_add_used_writes_element_then_idx(mem) -> None:
    drv = DriverQueue(mem)
    q = drv.device_queue()
    head = drv.add_chain([(drv.alloc(8), 8, True)])
    chain = q.pop(mem)
    q.add_used(mem, chain.head_index, 8)
    assert drv.take_used() == [(head, 8)]


def test_add_used_many_publishes_all_entries_with_one_idx_store_and_skips_bad_heads(
        mem, monkeypatch: pytest.MonkeyPatch) -> None:
    drv = DriverQueue(mem, size=4)
    q = drv.device_queue()
    drv.start_at(65534)
    q.next_avail = q.next_used = 65534
    heads = [drv.add_chain([(drv.alloc(4), 4, True)]) for _ in range(3)]
    chains = [q.pop(mem) for _ in range(3)]
    assert [c.head_index for c in chains if c is not None] == heads
    writes: list[int] = []
    store = mem.write_u16
    monkeypatch.setattr(mem, "write_u16", lambda addr, value: (writes.append(value), store(addr, value)))
    q.add_used_many(mem, [(heads[0], 1), (99, 7), (heads[1], 2), (heads[2], 3)])
    monkeypatch.undo()
    assert writes == [1]  # 65534 + 3, wrapped: one store of used idx
    assert drv.take_used() == [(heads[0], 1), (heads[1], 2), (heads[2], 3)] and q.next_used == 1


def test_wrap_around_at_65535(mem) -> None:
    drv = DriverQueue(mem, size=4)
    q = drv.device_queue()
    drv.start_at(65534)
    q.next_avail = q.next_used = 65534
    heads = [drv.add_chain([(drv.alloc(4), 4, True)]) for _ in range(3)]
    assert drv.avail_idx == 1
    popped = []
    while (chain := q.pop(mem)) is not None:
        popped.append(chain.head_index)
        q.add_used(mem, chain.head_index, 4)
    assert popped == heads
    assert q.next_avail == 1 and drv.used_idx() == 1
    assert [h for h, _ in drv.take_used()] == heads


def test_avail_idx_jumping_more_than_size_breaks_queue(mem) -> None:
    drv = DriverQueue(mem, size=8)
    q = drv.device_queue()
    drv.set_avail_idx(9)
    assert q.pop(mem) is None
    assert q.broken
    assert q.pop(mem) is None


def test_head_out_of_range_is_invalid_head(mem) -> None:
    drv = DriverQueue(mem, size=8)
    q = drv.device_queue()
    drv.publish(8)
    chain = q.pop(mem)
    assert chain.error is ChainError.HEAD_OUT_OF_RANGE and not chain.head_valid


def test_next_out_of_range(mem) -> None:
    drv = DriverQueue(mem, size=8)
    q = drv.device_queue()
    drv.write_desc(0, drv.alloc(4), 4, VIRTQ_DESC_F_NEXT, 12)
    drv.publish(0)
    chain = q.pop(mem)
    assert chain.error is ChainError.NEXT_OUT_OF_RANGE and chain.head_valid


def test_descriptor_loop_is_refused(mem) -> None:
    drv = DriverQueue(mem, size=8)
    q = drv.device_queue()
    buf = drv.alloc(4)
    drv.write_desc(0, buf, 4, VIRTQ_DESC_F_NEXT, 1)
    drv.write_desc(1, buf, 4, VIRTQ_DESC_F_NEXT, 0)
    drv.publish(0)
    chain = q.pop(mem)
    assert chain.error is ChainError.TOO_LONG
    assert len(chain) == 8


@pytest.mark.parametrize("addr,length", [(MEM_SIZE - 4, 8), (MEM_SIZE, 1), (1 << 62, 16), (0, 0xFFFFFFFF)])
def test_buffer_outside_memory(mem, addr: int, length: int) -> None:
    drv = DriverQueue(mem)
    q = drv.device_queue()
    drv.add_chain([(drv.alloc(16), 16, False), (addr, length, True)])
    chain = q.pop(mem)
    assert chain.error is ChainError.BAD_BUFFER and chain.head_valid


def test_readable_after_writable_is_refused(mem) -> None:
    drv = DriverQueue(mem)
    q = drv.device_queue()
    drv.add_chain([(drv.alloc(4), 4, True), (drv.alloc(4), 4, False)])
    assert q.pop(mem).error is ChainError.READ_AFTER_WRITE


def test_indirect_table(mem) -> None:
    drv = DriverQueue(mem)
    q = drv.device_queue(features=INDIRECT)
    a, b = drv.alloc(16), drv.alloc(64)
    head = drv.add_indirect_chain([(a, 16, False), (b, 64, True)])
    chain = q.pop(mem)
    assert chain.error is None and chain.head_index == head
    assert list(chain) == [Descriptor(a, 16, False), Descriptor(b, 64, True)]


def test_direct_descriptors_then_indirect(mem) -> None:
    drv = DriverQueue(mem)
    q = drv.device_queue(features=INDIRECT)
    a, b = drv.alloc(16), drv.alloc(8)
    table = drv.alloc(16)
    drv.write_desc(0, b, 8, VIRTQ_DESC_F_WRITE, table=table)
    drv.write_desc(0, a, 16, VIRTQ_DESC_F_NEXT, 1)
    drv.write_desc(1, table, 16, VIRTQ_DESC_F_INDIRECT)
    drv.publish(0)
    assert list(q.pop(mem)) == [Descriptor(a, 16, False), Descriptor(b, 8, True)]


def test_indirect_without_feature(mem) -> None:
    drv = DriverQueue(mem)
    q = drv.device_queue()
    drv.add_indirect_chain([(drv.alloc(16), 16, False)])
    assert q.pop(mem).error is ChainError.INDIRECT_NOT_NEGOTIATED


@pytest.mark.parametrize("length", [0, 15, 24])
def test_indirect_table_bad_length(mem, length: int) -> None:
    drv = DriverQueue(mem)
    q = drv.device_queue(features=INDIRECT)
    drv.write_desc(0, drv.alloc(64), length, VIRTQ_DESC_F_INDIRECT)
    drv.publish(0)
    assert q.pop(mem).error is ChainError.BAD_INDIRECT_TABLE


def test_indirect_table_outside_memory(mem) -> None:
    drv = DriverQueue(mem)
    q = drv.device_queue(features=INDIRECT)
    drv.write_desc(0, MEM_SIZE - 16, 32, VIRTQ_DESC_F_INDIRECT)
    drv.publish(0)
    assert q.pop(mem).error is ChainError.BAD_INDIRECT_TABLE


def test_nested_indirect_and_indirect_loop(mem) -> None:
    drv = DriverQueue(mem)
    q = drv.device_queue(features=INDIRECT)
    inner = drv.alloc(16)
    table = drv.alloc(32)
    drv.write_desc(0, drv.alloc(4), 4, VIRTQ_DESC_F_NEXT, 1, table=table)
    drv.write_desc(1, inner, 16, VIRTQ_DESC_F_INDIRECT, table=table)
    drv.write_desc(0, table, 32, VIRTQ_DESC_F_INDIRECT)
    drv.publish(0)
    assert q.pop(mem).error is ChainError.NESTED_INDIRECT

    loop = drv.alloc(32)
    buf = drv.alloc(4)
    drv.write_desc(0, buf, 4, VIRTQ_DESC_F_NEXT, 1, table=loop)
    drv.write_desc(1, buf, 4, VIRTQ_DESC_F_NEXT, 0, table=loop)
    drv.write_desc(1, loop, 32, VIRTQ_DESC_F_INDIRECT)
    drv.publish(1)
    assert q.pop(mem).error is ChainError.TOO_LONG


def test_indirect_with_next_is_refused(mem) -> None:
    drv = DriverQueue(mem)
    q = drv.device_queue(features=INDIRECT)
    table = drv.alloc(16)
    drv.write_desc(0, drv.alloc(4), 4, 0, table=table)
    drv.write_desc(0, table, 16, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, 1)
    drv.publish(0)
    assert q.pop(mem).error is ChainError.INDIRECT_WITH_NEXT


def _complete_one(drv: DriverQueue, q: Queue, mem) -> None:
    drv.add_chain([(drv.alloc(4), 4, True)])
    chain = q.pop(mem)
    q.add_used(mem, chain.head_index, 4)


def test_no_interrupt_flag_without_event_idx(mem) -> None:
    drv = DriverQueue(mem)
    q = drv.device_queue()
    _complete_one(drv, q, mem)
    assert q.needs_notification(mem)
    assert not q.needs_notification(mem)  # nothing new since
    drv.set_avail_flags(VIRTQ_AVAIL_F_NO_INTERRUPT)
    _complete_one(drv, q, mem)
    assert not q.needs_notification(mem)


def test_event_idx_suppression(mem) -> None:
    drv = DriverQueue(mem, size=16)
    q = drv.device_queue(features=EVENT_IDX)
    _complete_one(drv, q, mem)
    assert q.needs_notification(mem)  # first completion always interrupts
    drv.set_used_event(3)  # "interrupt me when used idx passes 3"
    _complete_one(drv, q, mem)  # used idx 2
    assert not q.needs_notification(mem)
    _complete_one(drv, q, mem)  # used idx 3
    assert not q.needs_notification(mem)
    _complete_one(drv, q, mem)  # used idx 4: crossed used_event + 1
    assert q.needs_notification(mem)
    drv.set_avail_flags(VIRTQ_AVAIL_F_NO_INTERRUPT)  # ignored with EVENT_IDX
    drv.set_used_event(4)
    _complete_one(drv, q, mem)
    assert q.needs_notification(mem)


def test_event_idx_sets_avail_event_when_drained(mem) -> None:
    drv = DriverQueue(mem)
    q = drv.device_queue(features=EVENT_IDX)
    drv.add_chain([(drv.alloc(4), 4, True)])
    drv.add_chain([(drv.alloc(4), 4, True)])
    while q.pop(mem) is not None:
        pass
    assert drv.avail_event() == 2


def test_a_driver_polling_meanwhile_never_sees_used_idx_go_back_nor_avail_event_change() -> None:
    """Linux's driver takes a used entry whenever used idx differs from its own count, so an idx
    seen at 0 for an instant (``struct.pack_into`` zeroes its target, then writes) hands it an entry
    of the ring's previous lap: "id N is not a head!", seen in the rig. An avail_event seen at 0
    tells it to skip a kick. A process on another core reads both while the device writes them."""
    mem = GuestMemory.memfd([(0, MEM_SIZE)])
    try:
        drv = DriverQueue(mem, size=256)
        q = drv.device_queue(features=EVENT_IDX)
        q.next_avail = 0x1234
        mem.write_u16(drv.avail_addr + 2, 0x1234)  # nothing pending: pop() only writes avail_event
        q.next_used = 0xFFF0  # the index wraps through 0 during the run as well
        avail_event = drv.used_addr + 4 + 8 * drv.size
        assert q.pop(mem) is None and mem.read_u16(avail_event) == 0x1234

        def read() -> int:
            return mem.read_u16(drv.used_addr + 2) | mem.read_u16(avail_event) << 16

        def ok(prev: int, value: int) -> bool:
            return ((value - prev) & 0xFFFF) < 0x8000 and value >> 16 == 0x1234

        def write() -> None:
            q.add_used(mem, 7, 0)
            q.add_used_many(mem, [(8, 0), (9, 0)])
            q.pop(mem)

        reads, bad = watch_while_writing(read, ok, write, seconds=1.0)
        assert reads > 10_000 and bad == [], [f"{a:#x} -> {b:#x}" for a, b in bad]
    finally:
        mem.close()


def test_is_valid(mem) -> None:
    drv = DriverQueue(mem, size=16)
    q = drv.device_queue(max_size=256)
    assert q.is_valid(mem)
    for name, value in [("size", 12), ("size", 512), ("size", 0), ("desc_table", drv.desc_addr + 8),
                        ("avail_ring", drv.avail_addr + 1), ("used_ring", drv.used_addr + 2),
                        ("used_ring", MEM_SIZE - 8), ("desc_table", MEM_SIZE - 16), ("ready", False)]:
        q2 = drv.device_queue(max_size=256)
        setattr(q2, name, value)
        assert not q2.is_valid(mem), (name, value)


def test_queue_max_size_must_be_power_of_two() -> None:
    with pytest.raises(ValueError):
        Queue(100)


_desc = st.tuples(
    st.sampled_from([0, 0x100000, MEM_SIZE - 8, MEM_SIZE, (1 << 64) - 1]) | st.integers(0, MEM_SIZE + 64),
    st.integers(0, 0xFFFFFFFF) | st.integers(0, 4096),
    st.integers(0, 7),
    st.integers(0, 0xFFFF) | st.integers(0, 9),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(table=st.lists(_desc, min_size=8, max_size=8), heads=st.lists(st.integers(0, 0xFFFF) | st.integers(0, 9), max_size=6),
       avail_idx=st.integers(0, 0xFFFF))
def test_hostile_rings_never_raise(mem, table, heads, avail_idx: int) -> None:
    drv = DriverQueue(mem, size=8)
    q = drv.device_queue(features=INDIRECT | EVENT_IDX)
    for i, (addr, length, flags, nxt) in enumerate(table):
        drv.write_desc(i, addr, length, flags, nxt)
    for head in heads:
        drv.publish(head)
    if avail_idx % 3 == 0:
        drv.set_avail_idx(avail_idx)
    popped = 0
    while (chain := q.pop(mem)) is not None:
        popped += 1
        assert popped <= 8
        for d in chain:
            assert mem.check_range(d.addr, d.len)
        if chain.head_valid:
            assert chain.head_index < 8
            q.add_used(mem, chain.head_index, 0)
    q.needs_notification(mem)
