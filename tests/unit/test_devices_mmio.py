"""The virtio-mmio transport, driven as Linux drives it and as a broken driver might."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firelet.arch.x86_64 import layout
from firelet.devices.interrupt import CountingInterrupt
from firelet.devices.virtio import mmio
from firelet.devices.virtio.device import VIRTIO_F_VERSION_1, VirtioDeviceBase
from firelet.devices.virtio.queue import VIRTIO_RING_F_EVENT_IDX

from virtio_utils import (
    DriverQueue,
    mmio_device_features,
    mmio_init,
    mmio_read32,
    mmio_setup_queue,
    mmio_write32,
    new_memory,
)

VERSION_1 = 1 << VIRTIO_F_VERSION_1


class _EchoDevice(VirtioDeviceBase):
    """Two queues; completes every chain with length 7 and records what it saw."""

    device_type = 42
    queue_max_sizes = (16, 8)

    def __init__(self) -> None:
        super().__init__(1 << VIRTIO_RING_F_EVENT_IDX | 1 << 3)
        self.activations = 0
        self.resets = 0
        self.processed: list[int] = []
        self.fail = False

    def config_space(self) -> bytes:
        return bytes(range(1, 9))

    def activate(self, mem, queues, interrupt) -> None:  # type: ignore[no-untyped-def]
        super().activate(mem, queues, interrupt)
        self.activations += 1

    def reset(self) -> None:
        super().reset()
        self.resets += 1

    def process_queue(self, index: int) -> None:
        if self.fail:
            raise RuntimeError("device bug")
        queue = self.queues[index]
        while (chain := queue.pop(self.mem)) is not None:
            self.processed.append(index)
            queue.add_used(self.mem, chain.head_index, 7)
        if queue.needs_notification(self.mem):
            self.interrupt.signal_used_queue()


@pytest.fixture
def setup():
    mem = new_memory()
    device = _EchoDevice()
    irq = CountingInterrupt()
    transport = mmio.MmioTransport(mem, device, irq)
    drvs = [DriverQueue(mem, 16, base=0x10000, data_start=0x100000),
            DriverQueue(mem, 8, base=0x20000, data_start=0x200000)]
    yield transport, device, irq, drvs
    mem.close()


def test_identity_registers(setup) -> None:
    transport, device, _, _ = setup
    assert mmio_read32(transport, mmio.MAGIC_VALUE) == 0x74726976
    assert mmio_read32(transport, mmio.VERSION) == 2
    assert mmio_read32(transport, mmio.DEVICE_ID) == 42
    assert mmio_read32(transport, mmio.VENDOR_ID) == 0
    assert mmio_device_features(transport) == device.avail_features
    assert device.avail_features & VERSION_1
    assert transport.queue_count == 2


def test_linux_init_sequence_activates_once(setup) -> None:
    transport, device, irq, drvs = setup
    status = mmio_init(transport, drvs)
    assert status == (mmio.STATUS_ACKNOWLEDGE | mmio.STATUS_DRIVER | mmio.STATUS_FEATURES_OK
                      | mmio.STATUS_DRIVER_OK)
    assert device.activated and device.activations == 1
    assert device.acked_features == device.avail_features
    assert all(q.event_idx for q in transport.queues)
    mmio_write32(transport, mmio.STATUS, status)  # rewriting DRIVER_OK does not re-activate
    assert device.activations == 1

    drvs[1].add_chain([(drvs[1].alloc(8), 8, True)])
    mmio_write32(transport, mmio.QUEUE_NOTIFY, 1)
    assert device.processed == [1]
    assert drvs[1].take_used()[0][1] == 7
    assert irq.count == 1
    assert mmio_read32(transport, mmio.INTERRUPT_STATUS) == mmio.VIRTIO_MMIO_INT_VRING
    mmio_write32(transport, mmio.INTERRUPT_ACK, mmio.VIRTIO_MMIO_INT_VRING)
    assert mmio_read32(transport, mmio.INTERRUPT_STATUS) == 0

    drvs[0].add_chain([(drvs[0].alloc(8), 8, True)])
    transport.notify(0)  # the ioeventfd path
    assert device.processed == [1, 0]


def test_reset_returns_everything_to_start(setup) -> None:
    transport, device, _, drvs = setup
    mmio_init(transport, drvs)
    transport.signal_used_queue()
    mmio_write32(transport, mmio.STATUS, 0)
    assert mmio_read32(transport, mmio.STATUS) == 0
    assert mmio_read32(transport, mmio.INTERRUPT_STATUS) == 0
    assert not device.activated and device.resets >= 1
    assert not any(q.ready for q in transport.queues)
    assert mmio_init(transport, drvs) & mmio.STATUS_DRIVER_OK
    assert device.activations == 2


def test_features_not_offered_are_refused(setup) -> None:
    transport, device, _, drvs = setup
    status = mmio_init(transport, drvs, features=device.avail_features | 1 << 40)
    assert not status & mmio.STATUS_FEATURES_OK
    assert not device.activated


def test_features_without_version_1_are_refused(setup) -> None:
    transport, device, _, drvs = setup
    status = mmio_init(transport, drvs, features=device.avail_features & ~VERSION_1)
    assert not status & mmio.STATUS_FEATURES_OK


def test_driver_ok_before_queues_are_valid(setup) -> None:
    transport, device, irq, _drvs = setup
    status = mmio_init(transport, [])  # no queue set up at all
    assert status & mmio.STATUS_DEVICE_NEEDS_RESET
    assert not device.activated
    assert mmio_read32(transport, mmio.INTERRUPT_STATUS) & mmio.VIRTIO_MMIO_INT_CONFIG
    assert irq.count == 1


def test_misaligned_queue_needs_reset(setup) -> None:
    transport, device, _, _drvs = setup
    mmio_init(transport, [], features=None)
    mmio_write32(transport, mmio.STATUS, 0)
    bad = DriverQueue(transport.mem, 16, base=0x10008)  # descriptor table not 16-aligned
    assert mmio_init(transport, [bad]) & mmio.STATUS_DEVICE_NEEDS_RESET
    assert not device.activated


def test_driver_ok_out_of_order_is_ignored(setup) -> None:
    transport, device, _, _drvs = setup
    mmio_write32(transport, mmio.STATUS, mmio.STATUS_ACKNOWLEDGE)
    mmio_write32(transport, mmio.STATUS, mmio.STATUS_ACKNOWLEDGE | mmio.STATUS_DRIVER_OK)
    assert mmio_read32(transport, mmio.STATUS) == mmio.STATUS_ACKNOWLEDGE
    assert not device.activated


def test_queue_registers_locked_after_driver_ok(setup) -> None:
    transport, _, _, drvs = setup
    mmio_init(transport, drvs)
    mmio_write32(transport, mmio.QUEUE_SEL, 0)
    mmio_write32(transport, mmio.QUEUE_DESC_LOW, 0x5000)
    mmio_write32(transport, mmio.QUEUE_NUM, 2)
    assert transport.queues[0].desc_table == drvs[0].desc_addr and transport.queues[0].size == 16


def test_nonexistent_queue(setup) -> None:
    transport, _, _, _ = setup
    mmio_write32(transport, mmio.QUEUE_SEL, 5)
    assert mmio_read32(transport, mmio.QUEUE_NUM_MAX) == 0
    assert mmio_read32(transport, mmio.QUEUE_READY) == 0
    mmio_write32(transport, mmio.QUEUE_READY, 1)
    transport.notify(5)


def test_odd_width_register_access_is_ignored(setup) -> None:
    transport, _, _, _ = setup
    buf = bytearray(b"\xaa\xaa")
    transport.read(mmio.MAGIC_VALUE, memoryview(buf))
    assert buf == b"\0\0"
    transport.write(mmio.STATUS, b"\x01")
    transport.write(mmio.STATUS + 1, b"\x01\x00\x00\x00")
    assert mmio_read32(transport, mmio.STATUS) == 0


def test_config_space_any_width(setup) -> None:
    transport, _, _, _ = setup
    one = bytearray(1)
    transport.read(mmio.CONFIG + 3, memoryview(one))
    assert one == b"\x04"
    eight = bytearray(8)
    transport.read(mmio.CONFIG + 6, memoryview(eight))
    assert eight == b"\x07\x08" + bytes(6)


def test_config_change_bumps_generation(setup) -> None:
    transport, _, irq, _ = setup
    before = mmio_read32(transport, mmio.CONFIG_GENERATION)
    transport.signal_config_change()
    assert mmio_read32(transport, mmio.CONFIG_GENERATION) == before + 1
    assert mmio_read32(transport, mmio.INTERRUPT_STATUS) == mmio.VIRTIO_MMIO_INT_CONFIG
    assert irq.count == 1


def test_device_exception_marks_needs_reset(setup) -> None:
    transport, device, _, drvs = setup
    mmio_init(transport, drvs)
    device.fail = True
    transport.notify(0)
    assert mmio_read32(transport, mmio.STATUS) & mmio.STATUS_DEVICE_NEEDS_RESET
    device.fail = False
    drvs[0].add_chain([(drvs[0].alloc(4), 4, True)])
    transport.notify(0)
    assert device.processed == []  # a device that needs reset stays quiet


def test_corrupt_avail_idx_marks_needs_reset(setup) -> None:
    transport, _device, _, drvs = setup
    mmio_init(transport, drvs)
    drvs[0].set_avail_idx(1000)
    transport.notify(0)
    assert mmio_read32(transport, mmio.STATUS) & mmio.STATUS_DEVICE_NEEDS_RESET
    mmio_write32(transport, mmio.STATUS, 0)  # the driver resets and starts again
    assert mmio_init(transport, [DriverQueue(transport.mem, 16), drvs[1]]) & mmio.STATUS_DRIVER_OK


def test_failed_status_stops_setup(setup) -> None:
    transport, _device, _, drvs = setup
    mmio_write32(transport, mmio.STATUS, mmio.STATUS_ACKNOWLEDGE)
    mmio_write32(transport, mmio.STATUS, mmio.STATUS_ACKNOWLEDGE | mmio.STATUS_FAILED)
    assert mmio_read32(transport, mmio.STATUS) & mmio.STATUS_FAILED
    mmio_setup_queue(transport, 0, drvs[0])
    assert not transport.queues[0].ready


def test_notify_and_register_access_from_two_threads(setup) -> None:
    transport, device, _, drvs = setup
    mmio_init(transport, drvs)
    drv = drvs[0]
    done = threading.Event()

    def event_loop() -> None:
        while not done.is_set():
            transport.notify(0)

    thread = threading.Thread(target=event_loop)
    thread.start()
    try:
        for _ in range(200):
            drv.add_chain([(drv.alloc(4), 4, True)])
            mmio_write32(transport, mmio.QUEUE_NOTIFY, 0)
            mmio_read32(transport, mmio.INTERRUPT_STATUS)
    finally:
        done.set()
        thread.join()
    assert device.processed.count(0) == 200
    assert len(drv.take_used()) == 200


def test_an_unacknowledged_interrupt_is_raised_again_once_per_period(setup) -> None:
    """A lost edge (the IOAPIC pin masked when it came) must not strand the driver."""
    transport, _, irq, drvs = setup
    mmio_init(transport, drvs)
    drvs[0].add_chain([(drvs[0].alloc(8), 8, True)])
    transport.notify(0)
    assert irq.count == 1
    transport.rearm_interrupt()  # the first poll only notes that it is pending...
    assert irq.count == 1
    transport.rearm_interrupt()  # ...a whole period without an ACK raises it again
    assert irq.count == 2
    mmio_write32(transport, mmio.INTERRUPT_ACK, mmio.VIRTIO_MMIO_INT_VRING)
    for _ in range(3):
        transport.rearm_interrupt()
    assert irq.count == 2


def test_a_promptly_acknowledged_interrupt_is_never_raised_twice(setup) -> None:
    transport, _, irq, drvs = setup
    mmio_init(transport, drvs)
    for _ in range(3):
        transport.signal_used_queue()
        transport.rearm_interrupt()
        mmio_write32(transport, mmio.INTERRUPT_ACK, mmio.VIRTIO_MMIO_INT_VRING)
        transport.rearm_interrupt()
    assert irq.count == 3


# -- a hostile driver: any register, any width, any value, in any order ---------------
_REGISTERS = [v for k, v in vars(mmio).items() if k.isupper() and isinstance(v, int) and v < layout.VIRTIO_MMIO_SIZE
              and not k.startswith(("STATUS_", "VIRTIO_", "MMIO_", "VENDOR_ID_"))]
_OFFSETS = st.one_of(st.sampled_from(_REGISTERS), st.integers(0, layout.VIRTIO_MMIO_SIZE - 1))
_VALUES = st.one_of(st.sampled_from([0, 1, 2, 4, 8, 15, 16, 64, 128, 0xFF, 0x10000, 0xFFFFFFFF]),
                    st.integers(0, 0xFFFFFFFF))
_OPS = st.one_of(
    st.tuples(st.just("write"), _OFFSETS, st.sampled_from([1, 2, 4, 8]), _VALUES),
    st.tuples(st.just("read"), _OFFSETS, st.sampled_from([1, 2, 4, 8]), st.just(0)),
    st.tuples(st.just("notify"), st.integers(0, 3), st.just(0), st.just(0)),
    st.tuples(st.just("init"), st.just(0), st.just(0), st.just(0)),  # a well-behaved probe in between
    st.tuples(st.just("scribble"), st.integers(0, 0x30000), st.integers(1, 64), _VALUES),  # rings overwritten
)


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(_OPS, max_size=40))
def test_any_register_sequence_from_the_guest_keeps_the_transport_sane(ops) -> None:
    mem = new_memory()
    device, irq = _EchoDevice(), CountingInterrupt()
    transport = mmio.MmioTransport(mem, device, irq)
    drvs = [DriverQueue(mem, 16, base=0x10000, data_start=0x100000),
            DriverQueue(mem, 8, base=0x20000, data_start=0x200000)]
    for op, a, b, c in ops:
        if op == "write":
            transport.write(a, (c & (1 << 8 * b) - 1).to_bytes(b, "little"))
        elif op == "read":
            transport.read(a, memoryview(bytearray(b)))
        elif op == "notify":
            transport.notify(a)  # a queue index the guest picked: any, valid or not
        elif op == "init":
            mmio_init(transport, drvs)
            drvs[0].add_chain([(0x100000, 8, False)])
            transport.notify(0)
        else:
            mem.write(a, (c.to_bytes(4, "little") * 16)[:b])
        # whatever came before, the device still identifies itself and reports a status it can hold
        assert mmio_read32(transport, mmio.MAGIC_VALUE) == mmio.MMIO_MAGIC
        assert mmio_read32(transport, mmio.VERSION) == mmio.MMIO_VERSION
        assert mmio_read32(transport, mmio.STATUS) <= 0xFF
    mmio_write32(transport, mmio.STATUS, 0)  # and a reset always brings it back to the start
    assert mmio_read32(transport, mmio.STATUS) == 0
    assert mmio_init(transport, drvs) & mmio.STATUS_DRIVER_OK
