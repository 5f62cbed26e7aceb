"""Attach the device model to a VM: buses, interrupt lines, queue notifiers.

Legacy devices sit on the port-I/O bus at their PC/AT addresses; each virtio
device gets a 4 KiB virtio-mmio window and an IRQ from ``layout`` and is
announced on the kernel command line (``virtio_mmio.device=``). Interrupts are
eventfds registered as KVM irqfds; queue notifications are eventfds registered
as KVM ioeventfds on the QueueNotify register, served by the event loop, so a
guest kick never stops a vCPU in Python.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple

from firelet.devices.interrupt import EventFdInterrupt
from firelet.errors import UsageError
from firelet.log import get_logger
from firelet.arch.x86_64 import layout
from firelet.vstate.exits import ExitKind, VmExit

if TYPE_CHECKING:  # pragma: no cover
    from firelet.devices.pseudo.boot_timer import BootTimer
    from firelet.builder.boot import ConsoleSpec
    from firelet.config.model import Drive, VmConfig
    from firelet.vstate.vmm import Vmm

log = get_logger(__name__)

#: Takes a KVM registration to run later, in order, on the builder's helper thread
#: (:class:`firelet.builder.kernel_waits.KernelWaits`.add).
Later = Callable[[Callable[[], object]], None]

# PC/AT legacy assignments.
SERIAL_PORT_BASE = 0x3F8
SERIAL_PORT_COUNT = 8
SERIAL_IRQ = 4
#: How often an edge-triggered device re-raises an interrupt its driver has not acknowledged.
INTERRUPT_REARM_INTERVAL_S = 0.25
I8042_IRQ = 1
#: virtio-mmio QueueNotify register offset (virtio 1.2 §4.2.2).
VIRTIO_MMIO_QUEUE_NOTIFY = 0x50
#: Bytes read from the host's stdin at a time for the guest console.
_STDIN_CHUNK = 64


def _irq_line(vmm: Vmm, gsi: int, later: Later | None) -> EventFdInterrupt:
    line = EventFdInterrupt(gsi)
    vmm.resources.closers.append(line.close)
    register = partial(vmm.resources.vm_fd.register_irqfd, line.fd, gsi)
    if later is None:
        register()
    else:
        later(register)
    return line


class VirtioSlot(NamedTuple):
    """Where one virtio device lives: its 4 KiB MMIO window and its IRQ."""

    base: int
    irq: int


def plan_virtio(config: VmConfig, *, first_window: int = 0) -> list[tuple[Drive, VirtioSlot]]:
    """Each virtio device's window and IRQ, in order (the root drive first: /dev/vda).

    Known before any device exists, so the kernel command line can announce them
    while the devices themselves are still being made. ``first_window`` skips the
    MMIO windows other devices hold (the boot timer's).
    """
    from firelet.builder.boot import ordered_drives

    plan = []
    for index, drive in enumerate(ordered_drives(config.drives)):
        irq = layout.IRQ_BASE + index
        if irq > layout.IRQ_MAX:
            raise UsageError(f"too many virtio devices: at most {layout.IRQ_MAX - layout.IRQ_BASE + 1}")
        base = layout.VIRTIO_MMIO_START + (first_window + index) * layout.VIRTIO_MMIO_SIZE
        plan.append((drive, VirtioSlot(base, irq)))
    return plan


def device_cmdline(plan: list[tuple[Drive, VirtioSlot]]) -> list[str]:
    """The kernel command-line fragments that announce the planned virtio devices."""
    return [layout.virtio_mmio_cmdline(slot.base, slot.irq) for _, slot in plan]


def attach_devices(vmm: Vmm, plan: list[tuple[Drive, VirtioSlot]], console: ConsoleSpec,
                   later: Later | None = None) -> None:
    """Create and wire every device (announced on the command line by :func:`device_cmdline`).

    The KVM registrations (irqfds, ioeventfds, the UART's coalesced zone; some wait out
    an SRCU grace period in the kernel) are handed to ``later`` when it is given, for the
    caller to run in order on a helper thread while it goes on building. They must be
    done before any vCPU runs, and ``later`` must already hold the irqchip's creation
    (an irqfd needs it).
    """
    _attach_serial(vmm, console, later)
    _attach_i8042(vmm, later)
    for drive, slot in plan:
        from firelet.devices.virtio.block import Block

        device = Block(drive.path_on_host, read_only=bool(drive.is_read_only), drive_id=drive.drive_id)
        vmm.resources.closers.append(device.close)
        vmm.devices[f"block:{drive.drive_id}"] = device
        _attach_virtio(vmm, device, slot, later)


def attach_boot_timer(vmm: Vmm, timer: BootTimer) -> None:
    """Firecracker's boot timer in the first MMIO window (plan the virtio devices after it)."""
    vmm.mmio_bus.insert(timer, layout.BOOT_TIMER_START, layout.VIRTIO_MMIO_SIZE)
    vmm.devices["boot_timer"] = timer


def _attach_serial(vmm: Vmm, console: ConsoleSpec, later: Later | None) -> None:
    from firelet.devices.legacy.serial import Serial

    line = _irq_line(vmm, SERIAL_IRQ, later)
    input_fd = console.input_fd
    loop = vmm.event_loop
    reading = {"on": input_fd is not None}

    def resume_input() -> None:  # the guest drained its FIFO: read stdin again
        if input_fd is not None and not reading["on"]:
            reading["on"] = True
            loop.call_soon(lambda: loop.add_reader(input_fd, on_stdin))

    batch = None
    if vmm.coalesced_ring is not None:  # THR writes queue in KVM while THRE interrupts are off
        from firelet.vstate.coalesced import CoalescedPio

        batch = CoalescedPio(vmm.resources.vm_fd, vmm.coalesced_ring, SERIAL_PORT_BASE, 1, defer_first=later)
    serial = Serial(line, console.sink, on_input_space=resume_input, defer=loop.call_soon, tx_batch=batch)
    vmm.resources.closers.append(serial.flush_output)
    if vmm.coalesced_ring is not None:  # the last queued bytes, while the ring can still be read
        vmm.coalesced_ring.before_close(serial.flush_batched)
    vmm.io_bus.insert(serial, SERIAL_PORT_BASE, SERIAL_PORT_COUNT)

    def tick() -> None:
        serial.flush_batched()
        serial.rearm_interrupt()

    loop.every(INTERRUPT_REARM_INTERVAL_S, tick)
    vmm.devices["serial"] = serial

    def on_stdin() -> None:
        space = serial.input_space()
        if space <= 0:  # back-pressure: stop reading until the guest catches up
            loop.remove(input_fd)
            reading["on"] = False
            return
        try:
            data = os.read(input_fd, min(space, _STDIN_CHUNK))
        except BlockingIOError:
            return
        if not data:  # EOF on stdin: stop reading, the guest keeps running
            loop.remove(input_fd)
            reading["on"] = False
            return
        serial.enqueue_input(data)

    if input_fd is not None:
        loop.add_reader(input_fd, on_stdin)


def _attach_i8042(vmm: Vmm, later: Later | None) -> None:
    from firelet.devices.legacy.i8042 import COMMAND_PORT, DATA_PORT, I8042

    line = _irq_line(vmm, I8042_IRQ, later)
    device = I8042(lambda: vmm.finish(VmExit(ExitKind.RESET, "i8042 reset")), line)
    vmm.io_bus.insert(device.port(DATA_PORT), DATA_PORT, 1)
    vmm.io_bus.insert(device.port(COMMAND_PORT), COMMAND_PORT, 1)
    vmm.devices["i8042"] = device


def _attach_virtio(vmm: Vmm, device: Any, slot: VirtioSlot,
                   later: Later | None = None) -> None:
    from firelet.devices.virtio.mmio import MmioTransport

    base = slot.base
    line = _irq_line(vmm, slot.irq, later)
    transport = MmioTransport(vmm.memory, device, line)
    vmm.mmio_bus.insert(transport, base, layout.VIRTIO_MMIO_SIZE)
    vmm.event_loop.every(INTERRUPT_REARM_INTERVAL_S, transport.rearm_interrupt)
    for index in range(transport.queue_count):
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        vmm.resources.closers.append(lambda fd=fd: os.close(fd))
        register = partial(vmm.resources.vm_fd.register_ioeventfd, fd, base + VIRTIO_MMIO_QUEUE_NOTIFY, 4,
                           datamatch=index)
        if later is None:
            register()
        else:
            later(register)
        vmm.event_loop.add_eventfd(fd, lambda index=index: transport.notify(index))
