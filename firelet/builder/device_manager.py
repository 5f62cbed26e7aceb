"""Plan, make and wire a VM's devices from the registered device kinds.

:func:`plan_devices` asks each registered kind (:mod:`firelet.builder.registry`) which
devices the config wants and gives each its slot: legacy devices keep their fixed
PC/AT ports and IRQs; each virtio device gets the next free 4 KiB virtio-mmio window
and the next IRQ from ``layout``, announced on the kernel command line
(:func:`device_cmdline`). Both are known before any device exists.
:func:`attach_devices` then makes the devices and wires them: interrupts are
eventfds registered as KVM irqfds; a virtio device sits behind a virtio-mmio
transport whose queue notifications are eventfds registered as KVM ioeventfds on
the QueueNotify register, served by the event loop (or, for a device on vhost, by the
host kernel), so a guest kick never stops a vCPU in Python. Every device lands in the
VM's typed device registry.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from firelet.arch.x86_64 import layout
from firelet.builder.spec import (
    INTERRUPT_REARM_INTERVAL_S,
    BuildInputs,
    DeviceSpec,
    Later,
    VirtioMmio,
    Wiring,
    run_or_defer,
)
from firelet.devices.interrupt import EventFdInterrupt
from firelet.devices.protocols import KernelQueues
from firelet.errors import UsageError
from firelet.vstate.device_registry import BusKind, DeviceEntry, Slot

if TYPE_CHECKING:  # pragma: no cover
    from firelet.devices.virtio.mmio import MmioTransport
    from firelet.vstate.vmm import Vmm


@dataclass(frozen=True)
class PlannedDevice:
    """One device to make: its kind, id, config and slot."""

    spec: DeviceSpec[Any, Any]
    device_id: str
    config: Any
    slot: Slot

    @property
    def is_virtio(self) -> bool:
        return isinstance(self.spec.placement, VirtioMmio)


def plan_devices(inputs: BuildInputs, kinds: Iterable[DeviceSpec[Any, Any]]) -> list[PlannedDevice]:
    """Every device the VM gets, in the kinds' order, each with its slot.

    A virtio device takes the lowest MMIO window no fixed device holds (the boot
    timer holds the first) and the next IRQ from ``layout.IRQ_BASE``.
    """
    wanted = [(spec, device_id, config) for spec in kinds for device_id, config in spec.plan(inputs)]
    taken = [r for spec, _, _ in wanted if isinstance(spec.placement, Slot) and spec.placement.bus is BusKind.MMIO
             for r in spec.placement.ranges]
    windows = _free_windows(taken)
    irqs = itertools.count(layout.IRQ_BASE)
    plan = []
    for spec, device_id, config in wanted:
        if isinstance(spec.placement, Slot):
            slot = spec.placement
        else:
            irq = next(irqs)
            if irq > layout.IRQ_MAX:
                raise UsageError(f"too many virtio devices: at most {layout.IRQ_MAX - layout.IRQ_BASE + 1}")
            slot = Slot(BusKind.MMIO, ((next(windows), layout.VIRTIO_MMIO_SIZE),), irq)
        plan.append(PlannedDevice(spec, device_id, config, slot))
    return plan


def _free_windows(taken: list[tuple[int, int]]) -> Iterator[int]:
    for index in itertools.count():
        base = layout.VIRTIO_MMIO_START + index * layout.VIRTIO_MMIO_SIZE
        if not any(start < base + layout.VIRTIO_MMIO_SIZE and base < start + length for start, length in taken):
            yield base


def device_cmdline(plan: list[PlannedDevice]) -> list[str]:
    """The kernel command-line fragments that announce the planned virtio devices."""
    return [layout.virtio_mmio_cmdline(p.slot.base, p.slot.irq) for p in plan
            if p.is_virtio and p.slot.irq is not None]


def attach_devices(vmm: Vmm, plan: list[PlannedDevice], later: Later | None = None) -> None:
    """Make and wire every planned device (announced on the command line by :func:`device_cmdline`).

    The KVM registrations (irqfds, ioeventfds, the UART's coalesced zone; some wait out
    an SRCU grace period in the kernel) are handed to ``later`` when it is given, for the
    caller to run in order on a helper thread while it goes on building. They must be
    done before any vCPU runs, and ``later`` must already hold the irqchip's creation
    (an irqfd needs it).
    """
    for planned in plan:
        _attach(vmm, planned, later)


def _attach(vmm: Vmm, planned: PlannedDevice, later: Later | None) -> None:
    slot = planned.slot
    line = _irq_line(vmm, slot.irq, later) if slot.irq is not None else None
    device = planned.spec.make(planned.config, Wiring(vmm, line, later))
    transport = None
    if planned.is_virtio:
        assert line is not None
        transport = _attach_virtio(vmm, device, slot.base, line, later)
    else:
        bus = vmm.io_bus if slot.bus is BusKind.PIO else vmm.mmio_bus
        for base, length in slot.ranges:
            bus.insert(planned.spec.bus_view(device, base), base, length)
    vmm.devices.add(DeviceEntry(planned.spec.kind, planned.device_id, device, slot, transport))


def _irq_line(vmm: Vmm, gsi: int, later: Later | None) -> EventFdInterrupt:
    line = EventFdInterrupt(gsi)
    vmm.resources.closers.append(line.close)
    run_or_defer(later, partial(vmm.resources.vm_fd.register_irqfd, line.fd, gsi))
    return line


def _attach_virtio(vmm: Vmm, device: Any, base: int, line: EventFdInterrupt,
                   later: Later | None) -> MmioTransport:
    from firelet.devices.virtio.mmio import QUEUE_NOTIFY, MmioTransport

    transport = MmioTransport(vmm.memory, device, line)
    vmm.mmio_bus.insert(transport, base, layout.VIRTIO_MMIO_SIZE)
    vmm.event_loop.every(INTERRUPT_REARM_INTERVAL_S, transport.rearm_interrupt)
    in_kernel = isinstance(device, KernelQueues)
    fds = []
    for index in range(transport.queue_count):
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        vmm.resources.closers.append(partial(os.close, fd))
        run_or_defer(later, partial(vmm.resources.vm_fd.register_ioeventfd, fd, base + QUEUE_NOTIFY, 4,
                                    datamatch=index))
        if not in_kernel:
            vmm.event_loop.add_eventfd(fd, partial(transport.notify, index))
        fds.append(fd)
    if in_kernel:
        device.take_queue_eventfds(fds)
    return transport
