"""The PS/2 controller: its data and command ports and IRQ 1; a guest's reset ends the VM."""

from __future__ import annotations

from firelet.builder.spec import BuildInputs, DeviceSpec, Wiring
from firelet.devices.legacy.i8042 import COMMAND_PORT, DATA_PORT, I8042
from firelet.devices.protocols import BusDevice
from firelet.vstate.device_registry import BusKind, Slot
from firelet.vstate.exits import ExitKind, VmExit

#: The keyboard's PC/AT IRQ.
I8042_IRQ = 1


def _plan(inputs: BuildInputs) -> list[tuple[str, None]]:
    return [("i8042", None)]


def _make(config: None, wiring: Wiring) -> I8042:
    assert wiring.interrupt is not None
    vmm = wiring.vmm
    return I8042(lambda: vmm.finish(VmExit(ExitKind.RESET, "i8042 reset")), wiring.interrupt)


def _port(device: I8042, base: int) -> BusDevice:
    return device.port(base)


I8042_KIND = DeviceSpec(
    kind="i8042",
    plan=_plan,
    # One port wide each: 0x61 between them is KVM's (the in-kernel PIT's speaker port).
    placement=Slot(BusKind.PIO, ((DATA_PORT, 1), (COMMAND_PORT, 1)), irq=I8042_IRQ),
    make=_make,
    bus_view=_port,
)
