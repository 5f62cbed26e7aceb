"""What a device kind registers with the builder, and what the builder hands it back.

A :class:`DeviceSpec` says, for one kind of device: how many to make and with which
config (``plan``, from the validated :class:`~firelet.config.model.VmConfig` and the
caller's host-side inputs), where each sits (a fixed :class:`Slot`, or
:data:`VIRTIO_MMIO`: the next virtio-mmio window and IRQ, announced on the kernel
command line), and how to make one (``make``, from its config and a :class:`Wiring`:
guest memory, its interrupt line, the event loop). The builder does the rest: the
interrupt lines, bus ranges, virtio transports and queue notifiers, and the VM's
:class:`~firelet.vstate.device_registry.DeviceRegistry`. So a new kind of device is
its own package, a spec, and one line in :mod:`firelet.builder.registry`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from firelet.devices.legacy.output import Sink
from firelet.vstate.device_registry import Slot

if TYPE_CHECKING:  # pragma: no cover
    from firelet.config.model import VmConfig
    from firelet.devices.interrupt import EventFdInterrupt
    from firelet.devices.protocols import BusDevice
    from firelet.devices.pseudo.boot_timer import BootTimer
    from firelet.events.loop import EventLoop
    from firelet.memory.guest import GuestMemory
    from firelet.vstate.vmm import Vmm

C = TypeVar("C")
D = TypeVar("D")

#: Takes a KVM registration to run later, in order, on the builder's helper thread
#: (:meth:`firelet.builder.kernel_waits.KernelWaits.add`).
Later = Callable[[Callable[[], object]], None]


def run_or_defer(later: Later | None, call: Callable[[], object]) -> None:
    """Run a KVM registration now, or hand it to ``later`` when the builder defers them."""
    if later is None:
        call()
    else:
        later(call)


#: How often an edge-triggered device re-raises an interrupt its driver has not acknowledged.
INTERRUPT_REARM_INTERVAL_S = 0.25


class ConsoleSpec:
    """Where the UART's output goes and whether it reads host input (e.g. fd 0 of a terminal)."""

    __slots__ = ("sink", "input_fd")

    def __init__(self, sink: Sink, input_fd: int | None = None) -> None:
        self.sink, self.input_fd = sink, input_fd


@dataclass(frozen=True)
class BuildInputs:
    """What device kinds plan from: the validated config and what the caller brings from the host."""

    config: VmConfig
    console: ConsoleSpec
    #: Firecracker's ``--boot-timer`` device, made by the caller (it counts from the start request).
    boot_timer: BootTimer | None = None


@dataclass(frozen=True)
class VirtioMmio:
    """Placement of a virtio device: the next free virtio-mmio window and the next virtio IRQ."""


VIRTIO_MMIO = VirtioMmio()


@dataclass(frozen=True)
class Wiring:
    """What ``make`` gets besides its config.

    ``make`` is builder code and may reach the VM (the UART's kind sets up KVM's coalesced
    I/O through it); the device it makes gets only its interrupt, memory and callbacks.
    """

    vmm: Vmm
    #: The device's interrupt line (its slot's IRQ); None for a device without one. A virtio
    #: device does not use it: its transport raises the line.
    interrupt: EventFdInterrupt | None
    later: Later | None = None

    @property
    def memory(self) -> GuestMemory:
        memory: GuestMemory = self.vmm.memory
        return memory

    @property
    def loop(self) -> EventLoop:
        return self.vmm.event_loop

    def on_close(self, closer: Callable[[], None]) -> None:
        """Run ``closer`` when the VM is released (after the vCPUs and event loop stopped)."""
        self.vmm.resources.closers.append(closer)


def _on_its_bus(device: Any, base: int) -> Any:
    return device  # the device itself serves every range of its slot


@dataclass(frozen=True)
class DeviceSpec(Generic[C, D]):
    """One kind of device, as the builder plans, makes and wires it."""

    #: The kind's name (in the VM's device registry and in errors): "block", "serial", ...
    kind: str
    #: ``(device id, its config)`` for each device of this kind the VM gets, in order.
    plan: Callable[[BuildInputs], Sequence[tuple[str, C]]]
    placement: Slot | VirtioMmio
    make: Callable[[C, Wiring], D]
    #: What sits on the bus at each of a fixed slot's ranges (by default the device itself).
    bus_view: Callable[[D, int], BusDevice] = field(default=_on_its_bus)


class DeviceKinds:
    """The registration table: every kind the builder makes, in planning order.

    The order decides which virtio device gets which window and IRQ (and so its
    place on the kernel command line): keep existing kinds first.
    """

    def __init__(self, specs: Iterable[DeviceSpec[Any, Any]] = ()) -> None:
        self._specs: list[DeviceSpec[Any, Any]] = []
        for spec in specs:
            self.register(spec)

    def register(self, spec: DeviceSpec[C, D]) -> DeviceSpec[C, D]:
        if any(s.kind == spec.kind for s in self._specs):
            raise ValueError(f"device kind {spec.kind!r} is registered twice")
        self._specs.append(spec)
        return spec

    def __iter__(self) -> Iterator[DeviceSpec[Any, Any]]:
        return iter(list(self._specs))
