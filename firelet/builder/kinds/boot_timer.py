"""Firecracker's boot timer, when the caller made one: the first MMIO window, no IRQ."""

from __future__ import annotations

from firelet.arch.x86_64 import layout
from firelet.builder.spec import BuildInputs, DeviceSpec, Wiring
from firelet.devices.pseudo.boot_timer import BootTimer
from firelet.vstate.device_registry import BusKind, Slot


def _plan(inputs: BuildInputs) -> list[tuple[str, BootTimer]]:
    return [] if inputs.boot_timer is None else [("boot_timer", inputs.boot_timer)]


def _make(timer: BootTimer, wiring: Wiring) -> BootTimer:
    return timer  # made by the caller: it counts from the start request, before the build


BOOT_TIMER_KIND = DeviceSpec(
    kind="boot_timer",
    plan=_plan,
    # Where Firecracker's docs and guests expect it; the virtio windows go around it.
    placement=Slot(BusKind.MMIO, ((layout.BOOT_TIMER_START, layout.VIRTIO_MMIO_SIZE),)),
    make=_make,
)
