"""Save and restore of the virtqueue, the virtio-mmio transport and virtio-blk, mid-operation.

A "snapshot" here is what a real one holds: the state records (through plain
dicts, as a file would carry them) and a copy of guest RAM; the restored
objects are fresh ones made by their constructors, on the copied RAM.
"""

from __future__ import annotations

import copy
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from firelet.devices.interrupt import CountingInterrupt
from firelet.devices.virtio import mmio
from firelet.devices.virtio.block import Block
from firelet.devices.virtio.block.device import BlockState
from firelet.devices.virtio.block.request import (
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
)
from firelet.devices.virtio.device import VirtioDeviceBase
from firelet.devices.virtio.mmio import MmioTransportState
from firelet.devices.virtio.queue import (
    VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
    Queue,
    QueueState,
)
from firelet.memory.guest import GuestMemory
from firelet.records import RecordError, from_dict, to_dict

from virtio_utils import (
    DriverQueue,
    copy_memory,
    mmio_init,
    mmio_read32,
    mmio_write32,
    new_memory,
)

EVENT_IDX = 1 << VIRTIO_RING_F_EVENT_IDX
INDIRECT = 1 << VIRTIO_RING_F_INDIRECT_DESC


def _through_dict(record: Any) -> Any:
    return from_dict(type(record), to_dict(record))


# -- the virtqueue -------------------------------------------------------------------------------
def _restored_queue(mem: GuestMemory, drv: DriverQueue,
                    state: QueueState) -> tuple[GuestMemory, DriverQueue, Queue]:
    """The snapshot brought back: a copy of guest RAM, the driver's view of the ring on it, and
    a fresh queue of 8 restored from ``state``."""
    mem2 = copy_memory(mem)
    drv2 = copy.copy(drv)
    drv2.mem = mem2
    restored = Queue(8)
    restored.restore_state(_through_dict(state))
    assert restored.save_state() == state
    return mem2, drv2, restored


def test_a_queue_restored_mid_ring_serves_exactly_the_requests_still_in_flight() -> None:
    mem = new_memory()
    drv = DriverQueue(mem, size=8)
    drv.start_at(0xFFFD)  # the 16-bit indexes wrap while requests are in flight
    queue = drv.device_queue(features=EVENT_IDX)
    queue.next_avail = queue.next_used = 0xFFFD
    heads = [drv.add_chain([(drv.alloc(16), 16, True)]) for _ in range(6)]
    for _ in range(2):  # the device served two of six
        chain = queue.pop(mem)
        queue.add_used(mem, chain.head_index, 16)
    assert queue.needs_notification(mem)
    state = queue.save_state()
    assert (state.next_avail, state.next_used) == (0xFFFF, 0xFFFF) and queue.pending(mem) == 4

    mem2, drv2, restored = _restored_queue(mem, drv, state)
    served = []
    while (chain := restored.pop(mem2)) is not None:
        served.append(chain.head_index)
        restored.add_used(mem2, chain.head_index, 16)
    assert served == heads[2:]
    assert [h for h, _ in drv2.take_used()] == heads  # the two served before, then the four after
    assert drv2.avail_event() == (0xFFFD + 6) & 0xFFFF
    mem.close()
    mem2.close()


def test_a_queue_refuses_a_state_of_another_size_or_with_indexes_past_16_bits() -> None:
    state = Queue(16).save_state()
    with pytest.raises(RecordError, match="saved queue has 16 entries at most, this device's queue 8"):
        Queue(8).restore_state(state)
    with pytest.raises(RecordError, match="next_used 65536 is not a 16-bit ring index"):
        Queue(16).restore_state(from_dict(QueueState, to_dict(state) | {"next_used": 0x10000}))


# Driver and device steps on one queue: publish a chain, the device serves one, the device only
# pops one (a request it is still working on), an interrupt decision, the driver moves used_event.
_QUEUE_OPS = st.lists(st.sampled_from(["publish", "serve", "pop", "notify", "used_event"]), max_size=40)


def _step(op: str, mem: GuestMemory, drv: DriverQueue, queue: Queue, popped: list[int]) -> Any:
    if op == "publish" and (drv.avail_idx - drv.used_seen) & 0xFFFF < drv.size - len(popped):
        return drv.add_chain([(drv.alloc(8), 8, True)])
    if op in ("serve", "pop"):
        chain = queue.pop(mem)
        if chain is None:
            return None
        if op == "pop":
            popped.append(chain.head_index)
        else:
            queue.add_used(mem, chain.head_index, 8)
        return chain.head_index
    if op == "notify":
        return queue.needs_notification(mem)
    if op == "used_event":
        drv.set_used_event(drv.used_seen)
    return None


@settings(max_examples=80, deadline=None)
@given(before=_QUEUE_OPS, after=_QUEUE_OPS, features=st.sampled_from([0, EVENT_IDX, EVENT_IDX | INDIRECT]))
def test_a_restored_queue_goes_on_exactly_as_the_original(before: list[str], after: list[str], features: int) -> None:
    mem = new_memory(2 << 20)
    drv = DriverQueue(mem, size=8)
    queue = drv.device_queue(features=features)
    popped: list[int] = []
    for op in before:
        _step(op, mem, drv, queue, popped)
    state = queue.save_state()
    pending = queue.pending(mem)
    event(f"chains available at the snapshot: {'2+' if pending >= 2 else pending}, popped not used: {bool(popped)}")
    mem2, drv2, restored = _restored_queue(mem, drv, state)
    popped2 = list(popped)
    for op in after:
        assert _step(op, mem, drv, queue, popped) == _step(op, mem2, drv2, restored, popped2)
    assert restored.save_state() == queue.save_state()
    assert mem.read(drv.desc_addr, drv.end - drv.desc_addr) == mem2.read(drv.desc_addr, drv.end - drv.desc_addr)
    mem.close()
    mem2.close()


# -- the transport, with a device that echoes ----------------------------------------------------
class _Echo(VirtioDeviceBase):
    """Two queues; completes each chain with length 3."""

    device_type = 42
    queue_max_sizes = (16, 8)

    def __init__(self) -> None:
        super().__init__(EVENT_IDX | 1 << 3)

    def process_queue(self, index: int) -> None:
        queue = self.queues[index]
        while (chain := queue.pop(self.mem)) is not None:
            queue.add_used(self.mem, chain.head_index, 3)
        if queue.needs_notification(self.mem):
            self.interrupt.signal_used_queue()


def _driver_queues(mem: GuestMemory) -> list[DriverQueue]:
    return [DriverQueue(mem, 16, base=0x10000, data_start=0x100000),
            DriverQueue(mem, 8, base=0x20000, data_start=0x200000)]


def _restore_echo(state: MmioTransportState, acked: int, mem: GuestMemory) -> tuple[mmio.MmioTransport, _Echo, CountingInterrupt]:
    device, irq = _Echo(), CountingInterrupt()
    device.acked_features = acked  # the device's own (trivial) state first
    transport = mmio.MmioTransport(mem, device, irq)
    transport.restore_state(_through_dict(state))
    return transport, device, irq


def test_an_active_transport_with_an_unacknowledged_interrupt_comes_back_active_and_interrupting() -> None:
    mem = new_memory()
    device, irq = _Echo(), CountingInterrupt()
    transport = mmio.MmioTransport(mem, device, irq)
    drvs = _driver_queues(mem)
    assert mmio_init(transport, drvs) & mmio.STATUS_DRIVER_OK
    drvs[0].add_chain([(0x100000, 8, False)])
    transport.notify(0)
    drvs[1].add_chain([(0x200000, 8, False)])  # published, not yet notified
    state = transport.save_state()
    assert state.device_activated and state.interrupt_status == mmio.VIRTIO_MMIO_INT_VRING

    mem2 = copy_memory(mem)
    transport2, device2, irq2 = _restore_echo(state, device.acked_features, mem2)
    assert device2.activated and transport2.save_state() == state
    assert mmio_read32(transport2, mmio.STATUS) == mmio_read32(transport, mmio.STATUS)
    assert mmio_read32(transport2, mmio.INTERRUPT_STATUS) == mmio.VIRTIO_MMIO_INT_VRING
    transport2.rearm_interrupt()  # the edge raised before the snapshot may be gone: raised again
    assert irq2.count == 1
    transport2.notify(1)
    drv2 = copy.copy(drvs[1])
    drv2.mem = mem2
    assert drv2.take_used() == [(0, 3)]
    mem.close()
    mem2.close()


def test_a_transport_refuses_a_state_it_cannot_hold(tmp_path: Path) -> None:
    (tmp_path / "disk").write_bytes(bytes(512))
    mem = new_memory()
    device = _Echo()
    transport = mmio.MmioTransport(mem, device, CountingInterrupt())
    assert mmio_init(transport, _driver_queues(mem)) & mmio.STATUS_DRIVER_OK
    state = transport.save_state()
    with pytest.raises(RecordError, match="differ from the device's 0x0; restore the device's state first"):
        mmio.MmioTransport(mem, _Echo(), CountingInterrupt()).restore_state(state)
    plain = to_dict(state)
    plain["queues"][0]["desc_table"] = 1 << 40  # a ring outside guest RAM
    with pytest.raises(RecordError, match="an active device with invalid queues"):
        _restore_echo(from_dict(MmioTransportState, plain), device.acked_features, mem)
    with pytest.raises(RecordError, match="status 256 does not fit its 8-bit register"):
        _restore_echo(from_dict(MmioTransportState, to_dict(state) | {"status": 256}), device.acked_features, mem)
    with pytest.raises(RecordError, match="device type 42 with 2 queues, not type 2 with 1"):
        mmio.MmioTransport(mem, Block(tmp_path / "disk"), CountingInterrupt()).restore_state(state)
    mem.close()


_REGISTERS = [mmio.DEVICE_FEATURES_SEL, mmio.DRIVER_FEATURES, mmio.DRIVER_FEATURES_SEL, mmio.QUEUE_SEL,
              mmio.QUEUE_NUM, mmio.QUEUE_READY, mmio.QUEUE_NOTIFY, mmio.INTERRUPT_ACK, mmio.STATUS,
              mmio.QUEUE_DESC_LOW, mmio.QUEUE_DRIVER_LOW, mmio.QUEUE_DEVICE_LOW, mmio.QUEUE_DESC_HIGH]
_VALUES = st.one_of(st.sampled_from([0, 1, 2, 3, 4, 7, 8, 11, 15, 16, 0x10000, 0x20000, 0x100000]),
                    st.integers(0, 0xFFFFFFFF))
_MMIO_OPS = st.lists(st.one_of(
    st.tuples(st.just("write"), st.sampled_from(_REGISTERS), _VALUES),
    st.tuples(st.just("read"), st.sampled_from([mmio.STATUS, mmio.INTERRUPT_STATUS, mmio.QUEUE_READY,
                                                mmio.CONFIG_GENERATION, mmio.QUEUE_NUM_MAX]), st.just(0)),
    st.tuples(st.just("init"), st.just(0), st.just(0)),
    st.tuples(st.just("chain"), st.integers(0, 1), st.just(0)),
    st.tuples(st.just("notify"), st.integers(0, 2), st.just(0)),
), max_size=25)


def _mmio_step(op: tuple[str, int, int], transport: mmio.MmioTransport, drvs: list[DriverQueue]) -> Any:
    kind, a, b = op
    if kind == "write":
        mmio_write32(transport, a, b)
    elif kind == "read":
        return mmio_read32(transport, a)
    elif kind == "init":
        return mmio_init(transport, drvs)
    elif kind == "chain":
        drvs[a].add_chain([(drvs[a].alloc(8), 8, False)])
    else:
        transport.notify(a)
    return None


@settings(max_examples=80, deadline=None)
@given(before=_MMIO_OPS, after=_MMIO_OPS)
def test_any_reachable_transport_state_round_trips_and_goes_on_as_the_original(before: list[Any], after: list[Any]) -> None:
    mem = new_memory(3 << 20)
    device, irq = _Echo(), CountingInterrupt()
    transport = mmio.MmioTransport(mem, device, irq)
    drvs = _driver_queues(mem)
    for op in before:
        _mmio_step(op, transport, drvs)
    state = transport.save_state()
    event(f"device active at the snapshot: {state.device_activated}")
    mem2 = copy_memory(mem)
    transport2, device2, _ = _restore_echo(state, device.acked_features, mem2)
    assert transport2.save_state() == state and device2.activated == device.activated
    drvs2 = [copy.copy(d) for d in drvs]
    for d in drvs2:
        d.mem = mem2
    for op in after:
        assert _mmio_step(op, transport, drvs) == _mmio_step(op, transport2, drvs2)
    assert transport2.save_state() == transport.save_state()
    assert mem.read(0x10000, 0x20000) == mem2.read(0x10000, 0x20000)  # both rings, byte for byte
    mem.close()
    mem2.close()


# -- virtio-blk --------------------------------------------------------------------------------------
class _Disk:
    """A block device behind virtio-mmio and its driver queue, made fresh or restored."""

    def __init__(self, path: Path, mem: GuestMemory, drv: DriverQueue | None = None) -> None:
        self.mem = mem
        self.block = Block(path, drive_id="snap-drive")
        self.irq = CountingInterrupt()
        self.transport = mmio.MmioTransport(mem, self.block, self.irq)
        if drv is None:
            drv = DriverQueue(mem, size=16)
            assert mmio_init(self.transport, [drv]) & mmio.STATUS_DRIVER_OK
        self.drv = drv

    def submit(self, req_type: int, sector: int, data: bytes = b"", in_len: int = 0) -> tuple[int, int, int]:
        """Publish a request without notifying; returns (head, status address, data-in address)."""
        bufs = [(self.drv.alloc(16, struct.pack("<IIQ", req_type, 0, sector)), 16, False)]
        if data:
            bufs.append((self.drv.alloc(len(data), data), len(data), False))
        data_in = self.drv.alloc(in_len) if in_len else 0
        if in_len:
            bufs.append((data_in, in_len, True))
        status = self.drv.alloc(1, b"\xee")
        bufs.append((status, 1, True))
        return self.drv.add_chain(bufs), status, data_in


def test_a_drive_restored_with_requests_pending_serves_them_on_the_next_notify(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(64 * 512))
    disk = _Disk(path, new_memory())
    disk.submit(VIRTIO_BLK_T_OUT, 1, b"A" * 512)
    disk.transport.notify(0)  # served before the snapshot
    assert len(disk.drv.take_used()) == 1
    disk.drv.set_used_event(disk.drv.used_seen)  # as Linux: interrupt me at the next completion
    pending = [
        disk.submit(VIRTIO_BLK_T_OUT, 2, b"B" * 512),
        disk.submit(VIRTIO_BLK_T_IN, 1, in_len=1024),  # sectors 1-2: A, then the B written just before
        disk.submit(VIRTIO_BLK_T_GET_ID, 0, in_len=20),
    ]
    block_state, transport_state = disk.block.save_state(), disk.transport.save_state()
    assert block_state == BlockState(str(path), False, b"snap-drive".ljust(20, b"\0"), 64, disk.block.acked_features)
    mem2 = copy_memory(disk.mem)
    disk.block.close()

    drv2 = copy.copy(disk.drv)
    drv2.mem = mem2
    restored = _Disk(path, mem2, drv2)
    restored.block.restore_state(_through_dict(block_state))
    restored.transport.restore_state(_through_dict(transport_state))
    assert restored.block.activated and restored.transport.save_state() == transport_state
    restored.transport.notify(0)
    used = drv2.take_used()
    assert [head for head, _ in used] == [head for head, _, _ in pending]
    assert [length for _, length in used] == [1, 1025, 21]
    assert all(mem2.read_u8(status) == VIRTIO_BLK_S_OK for _, status, _ in pending)
    assert mem2.read(pending[1][2], 1024) == b"A" * 512 + b"B" * 512
    assert mem2.read(pending[2][2], 20) == b"snap-drive".ljust(20, b"\0")
    assert restored.irq.count == 1
    restored.block.close()
    assert path.read_bytes()[512:1536] == b"A" * 512 + b"B" * 512
    disk.mem.close()
    mem2.close()


def test_a_drive_refuses_the_state_of_another_image(tmp_path: Path) -> None:
    small, big = tmp_path / "small.img", tmp_path / "big.img"
    small.write_bytes(bytes(8 * 512))
    big.write_bytes(bytes(16 * 512))
    state = Block(small).save_state()
    with pytest.raises(RecordError, match=r"big.img \(16 sectors, read-write\) is not the saved one \(8 sectors"):
        Block(big).restore_state(state)
    with pytest.raises(RecordError, match="is not the saved one"):
        Block(small, read_only=True).restore_state(state)
    with pytest.raises(RecordError, match="were never offered"):
        Block(small).restore_state(from_dict(BlockState, to_dict(state) | {"acked_features": 1 << 60}))
