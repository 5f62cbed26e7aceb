"""The virtio-mmio transport, version 2 (virtio 1.2 §4.2.2), one 4 KiB window per device.

The driver's status walk (§3.1.1) is enforced: features are accepted only from
DRIVER state and only if they are a subset of what the device offers and
include VIRTIO_F_VERSION_1; DRIVER_OK activates the device once, and only if
every ready queue is valid (otherwise the device answers DEVICE_NEEDS_RESET and
a configuration-change interrupt, §2.1.2). One lock serialises register
accesses (vCPU threads) with :meth:`MmioTransport.notify` (the event loop,
when a queue's ioeventfd fires), so the two never race on a queue.
"""

from __future__ import annotations

import dataclasses
import struct
import threading
from typing import ClassVar

from firelet.devices.interrupt import Interrupt
from firelet.devices.virtio.device import VIRTIO_F_VERSION_1, VirtioDevice
from firelet.devices.virtio.queue import Queue, QueueState
from firelet.log import get_logger
from firelet.memory.guest import GuestMemory
from firelet.records import RecordError

log = get_logger(__name__)

# §4.2.2 register offsets.
MAGIC_VALUE = 0x000
VERSION = 0x004
DEVICE_ID = 0x008
VENDOR_ID = 0x00C
DEVICE_FEATURES = 0x010
DEVICE_FEATURES_SEL = 0x014
DRIVER_FEATURES = 0x020
DRIVER_FEATURES_SEL = 0x024
QUEUE_SEL = 0x030
QUEUE_NUM_MAX = 0x034
QUEUE_NUM = 0x038
QUEUE_READY = 0x044
QUEUE_NOTIFY = 0x050
INTERRUPT_STATUS = 0x060
INTERRUPT_ACK = 0x064
STATUS = 0x070
QUEUE_DESC_LOW = 0x080
QUEUE_DESC_HIGH = 0x084
QUEUE_DRIVER_LOW = 0x090
QUEUE_DRIVER_HIGH = 0x094
QUEUE_DEVICE_LOW = 0x0A0
QUEUE_DEVICE_HIGH = 0x0A4
CONFIG_GENERATION = 0x0FC
CONFIG = 0x100

MMIO_MAGIC = 0x74726976  # "virt"
MMIO_VERSION = 2
VENDOR_ID_VALUE = 0

# §2.1 Device status field.
STATUS_ACKNOWLEDGE = 1
STATUS_DRIVER = 2
STATUS_DRIVER_OK = 4
STATUS_FEATURES_OK = 8
STATUS_DEVICE_NEEDS_RESET = 64
STATUS_FAILED = 128

# §4.2.2 InterruptStatus bits.
VIRTIO_MMIO_INT_VRING = 1
VIRTIO_MMIO_INT_CONFIG = 2

_U32 = struct.Struct("<I")
_QUEUE_ADDR_REGS = {
    QUEUE_DESC_LOW: ("desc_table", 0), QUEUE_DESC_HIGH: ("desc_table", 32),
    QUEUE_DRIVER_LOW: ("avail_ring", 0), QUEUE_DRIVER_HIGH: ("avail_ring", 32),
    QUEUE_DEVICE_LOW: ("used_ring", 0), QUEUE_DEVICE_HIGH: ("used_ring", 32),
}


@dataclasses.dataclass(frozen=True)
class MmioTransportState:
    """The transport's registers, its queues, and whether the device behind it was activated.

    Restore the device's own state first, then this (which re-activates the device).
    """

    VERSION: ClassVar[int] = 1

    device_type: int
    status: int
    device_features_sel: int
    driver_features_sel: int
    driver_features: int
    queue_sel: int
    interrupt_status: int
    config_generation: int
    device_activated: bool
    queues: tuple[QueueState, ...]


class MmioTransport:
    """A virtio device behind virtio-mmio registers; a bus device for its window.

    The window's place and size are the builder's (``layout.VIRTIO_MMIO_SIZE``); the
    transport only answers offsets in it.
    """

    def __init__(self, mem: GuestMemory, device: VirtioDevice, interrupt: Interrupt) -> None:
        self.mem = mem
        self.device = device
        self.interrupt = interrupt
        self.queues = [Queue(size) for size in device.queue_max_sizes]
        self.lock = threading.Lock()
        self._isr_lock = threading.Lock()
        self.config_generation = 0
        self._clear_registers()

    def _clear_registers(self) -> None:
        """The driver-visible state a reset returns to (§2.4); the config generation survives."""
        with self._isr_lock:
            self.interrupt_status = 0
            self._acked_since_poll = True  # see rearm_interrupt
        self.status = 0
        self.device_features_sel = 0
        self.driver_features_sel = 0
        self.driver_features = 0
        self.queue_sel = 0

    @property
    def queue_count(self) -> int:
        return len(self.queues)

    # -- snapshots ----------------------------------------------------------------
    def save_state(self) -> MmioTransportState:
        with self.lock, self._isr_lock:
            return MmioTransportState(
                self.device.device_type, self.status, self.device_features_sel, self.driver_features_sel,
                self.driver_features, self.queue_sel, self.interrupt_status, self.config_generation,
                self.device.activated, tuple(q.save_state() for q in self.queues),
            )

    def restore_state(self, state: MmioTransportState) -> None:
        """Take ``state`` over; the device's own state must have been restored already.

        A device that was active is activated again, after the same checks as at
        DRIVER_OK. A pending interrupt status is raised again at the next
        :meth:`rearm_interrupt` unless the driver acknowledges it first.
        """
        if state.device_type != self.device.device_type or len(state.queues) != len(self.queues):
            raise RecordError(
                f"saved virtio-mmio state is for device type {state.device_type} with {len(state.queues)} queues, "
                f"not type {self.device.device_type} with {len(self.queues)}"
            )
        widths = {"status": 8, "device_features_sel": 32, "driver_features_sel": 32, "driver_features": 64,
                  "queue_sel": 32, "interrupt_status": 32, "config_generation": 32}
        for name, bits in widths.items():
            if not 0 <= getattr(state, name) < 1 << bits:
                raise RecordError(f"saved virtio-mmio {name} {getattr(state, name)} does not fit its "
                                  f"{bits}-bit register")
        features_ok = bool(state.status & STATUS_FEATURES_OK)
        if features_ok and self.device.acked_features != state.driver_features:
            raise RecordError(
                f"saved virtio-mmio features {state.driver_features:#x} differ from the device's "
                f"{self.device.acked_features:#x}; restore the device's state first"
            )
        staged = [Queue(q.max_size) for q in self.queues]  # checked before anything is changed
        for queue, queue_state in zip(staged, state.queues, strict=False):
            queue.restore_state(queue_state)
        ready = [q for q in staged if q.ready]
        if state.device_activated and not (features_ok and ready and all(q.is_valid(self.mem) for q in ready)):
            raise RecordError("saved virtio-mmio state has an active device with invalid queues")
        with self.lock:
            for queue, queue_state in zip(self.queues, state.queues, strict=False):
                queue.restore_state(queue_state)
            with self._isr_lock:
                self.interrupt_status = state.interrupt_status
                self.config_generation = state.config_generation
                self._acked_since_poll = self.interrupt_status == 0
            self.status = state.status
            self.device_features_sel, self.driver_features_sel = state.device_features_sel, state.driver_features_sel
            self.driver_features, self.queue_sel = state.driver_features, state.queue_sel
            if state.device_activated and not self.device.activated:
                self.device.activate(self.mem, self.queues, self)

    # -- InterruptSignal ------------------------------------------------------
    def signal_used_queue(self) -> None:
        with self._isr_lock:
            self.interrupt_status |= VIRTIO_MMIO_INT_VRING
        self.interrupt.trigger()

    def signal_config_change(self) -> None:
        with self._isr_lock:
            self.interrupt_status |= VIRTIO_MMIO_INT_CONFIG
            self.config_generation = (self.config_generation + 1) & 0xFFFFFFFF
        self.interrupt.trigger()

    def rearm_interrupt(self) -> None:
        """Raise the line again if InterruptStatus has stayed set, unacknowledged, since the last call.

        The line is an edge (irqfd); one the guest's IOAPIC drops (arriving while the
        pin is masked) would leave the driver waiting for a completion forever. Called
        periodically by the event loop, a lost edge costs one period instead.
        """
        with self._isr_lock:
            waiting = self.interrupt_status != 0
            fire = waiting and not self._acked_since_poll
            self._acked_since_poll = not waiting
        if fire:
            self.interrupt.trigger()

    # -- notifications --------------------------------------------------------
    def notify(self, index: int) -> None:
        """The driver notified queue ``index`` (ioeventfd or QueueNotify write)."""
        with self.lock:
            self._notify_locked(index)

    def _notify_locked(self, index: int) -> None:
        if not self.device.activated or not 0 <= index < len(self.queues):
            return
        if self.status & STATUS_DEVICE_NEEDS_RESET:
            return
        try:
            self.device.process_queue(index)
        except Exception:  # a device bug: stop the device, keep the VM running
            log.exception("virtio device type %d failed on queue %d", self.device.device_type, index)
            self._needs_reset()
            return
        if self.queues[index].broken:
            log.warning("virtio device type %d: driver corrupted queue %d", self.device.device_type, index)
            self._needs_reset()

    def _needs_reset(self) -> None:
        self.status |= STATUS_DEVICE_NEEDS_RESET
        if self.status & STATUS_DRIVER_OK:
            self.signal_config_change()

    # -- bus interface ----------------------------------------------------------
    def read(self, offset: int, data: memoryview) -> None:
        if offset >= CONFIG:
            with self.lock:
                self.device.read_config(offset - CONFIG, data)
            return
        if len(data) != 4 or offset % 4:
            log.debug("virtio-mmio: ignoring %d-byte read at %#x", len(data), offset)
            data[:] = bytes(len(data))
            return
        with self.lock:
            value = self._read_register(offset)
        _U32.pack_into(data, 0, value)

    def write(self, offset: int, data: bytes | memoryview) -> None:
        if offset >= CONFIG:
            with self.lock:
                if self.status & STATUS_DRIVER:
                    self.device.write_config(offset - CONFIG, data)
            return
        if len(data) != 4 or offset % 4:
            log.debug("virtio-mmio: ignoring %d-byte write at %#x", len(data), offset)
            return
        (value,) = _U32.unpack_from(data)
        with self.lock:
            self._write_register(offset, value)

    # -- registers ----------------------------------------------------------------
    def _selected_queue(self) -> Queue | None:
        return self.queues[self.queue_sel] if self.queue_sel < len(self.queues) else None

    def _read_register(self, offset: int) -> int:
        if offset == MAGIC_VALUE:
            return MMIO_MAGIC
        if offset == VERSION:
            return MMIO_VERSION
        if offset == DEVICE_ID:
            return self.device.device_type
        if offset == VENDOR_ID:
            return VENDOR_ID_VALUE
        if offset == DEVICE_FEATURES:
            if self.device_features_sel > 1:
                return 0
            return (self.device.avail_features >> (32 * self.device_features_sel)) & 0xFFFFFFFF
        if offset == QUEUE_NUM_MAX:
            queue = self._selected_queue()
            return queue.max_size if queue is not None else 0
        if offset == QUEUE_READY:
            queue = self._selected_queue()
            return int(queue is not None and queue.ready)
        if offset == INTERRUPT_STATUS:
            return self.interrupt_status
        if offset == STATUS:
            return self.status
        if offset == CONFIG_GENERATION:
            return self.config_generation
        return 0  # write-only or reserved registers read as zero

    def _write_register(self, offset: int, value: int) -> None:
        if offset == DEVICE_FEATURES_SEL:
            self.device_features_sel = value
        elif offset == DRIVER_FEATURES_SEL:
            self.driver_features_sel = value
        elif offset == DRIVER_FEATURES:
            self._write_driver_features(value)
        elif offset == QUEUE_SEL:
            self.queue_sel = value
        elif offset in (QUEUE_NUM, QUEUE_READY) or offset in _QUEUE_ADDR_REGS:
            self._write_queue_register(offset, value)
        elif offset == QUEUE_NOTIFY:
            self._notify_locked(value & 0xFFFF)
        elif offset == INTERRUPT_ACK:
            with self._isr_lock:
                self.interrupt_status &= ~value
                self._acked_since_poll = True
        elif offset == STATUS:
            self._write_status(value & 0xFF)
        else:
            log.debug("virtio-mmio: ignoring write of %#x to register %#x", value, offset)

    def _write_driver_features(self, value: int) -> None:
        # §3.1.1: features are written after DRIVER and before FEATURES_OK.
        if self.status & (STATUS_FEATURES_OK | STATUS_FAILED) or not self.status & STATUS_DRIVER:
            log.debug("virtio-mmio: driver features written in status %#x, ignored", self.status)
            return
        if self.driver_features_sel > 1:
            return
        shift = 32 * self.driver_features_sel
        self.driver_features = (self.driver_features & ~(0xFFFFFFFF << shift)) | (value << shift)

    def _write_queue_register(self, offset: int, value: int) -> None:
        queue = self._selected_queue()
        # The driver sets a queue up before DRIVER_OK and while it is not ready (§4.2.3.2).
        if queue is None or self.status & STATUS_DRIVER_OK or self.status & STATUS_FAILED:
            return
        if offset == QUEUE_READY:
            queue.ready = value == 1
            return
        if queue.ready:
            return
        if offset == QUEUE_NUM:
            queue.size = value
            return
        name, shift = _QUEUE_ADDR_REGS[offset]
        old = getattr(queue, name)
        setattr(queue, name, (old & ~(0xFFFFFFFF << shift)) | (value << shift))

    def _write_status(self, value: int) -> None:
        if value == 0:
            self._reset()
            return
        old = self.status
        if value & ~old & STATUS_FAILED:
            self.status |= STATUS_FAILED
            return
        if value & old != old & ~STATUS_DEVICE_NEEDS_RESET:
            log.debug("virtio-mmio: driver cleared status bits (%#x -> %#x), ignored", old, value)
            return
        new_bits = value & ~old
        # §3.1.1: each step needs the previous one.
        if (new_bits == STATUS_ACKNOWLEDGE and old == 0) or (new_bits == STATUS_DRIVER and old & STATUS_ACKNOWLEDGE):
            self.status = value
        elif new_bits == STATUS_FEATURES_OK and old & STATUS_DRIVER:
            if self._features_acceptable():
                self.status = value
                self.device.acked_features = self.driver_features
                for queue in self.queues:
                    queue.set_features(self.driver_features)
            # else FEATURES_OK stays clear, which the driver reads back as refusal.
        elif new_bits == STATUS_DRIVER_OK and old & STATUS_FEATURES_OK:
            self._driver_ok(value)
        elif new_bits:
            log.debug("virtio-mmio: status %#x -> %#x out of order, ignored", old, value)

    def _features_acceptable(self) -> bool:
        offered = self.device.avail_features
        ok = not self.driver_features & ~offered and self.driver_features >> VIRTIO_F_VERSION_1 & 1
        if not ok:
            log.debug("virtio-mmio: refusing features %#x (offered %#x)", self.driver_features, offered)
        return bool(ok)

    def _driver_ok(self, value: int) -> None:
        ready = [q for q in self.queues if q.ready]
        if not ready or not all(q.is_valid(self.mem) for q in ready):
            log.warning("virtio device type %d: DRIVER_OK with invalid queues", self.device.device_type)
            self.status = value | STATUS_DEVICE_NEEDS_RESET
            self.signal_config_change()
            return
        self.status = value
        if not self.device.activated:
            self.device.activate(self.mem, self.queues, self)

    def _reset(self) -> None:
        """§2.4: the driver wrote 0 to Status."""
        self.device.reset()
        for queue in self.queues:
            queue.reset()
        self._clear_registers()
