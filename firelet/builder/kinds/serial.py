"""The UART (COM1) at its PC/AT place, wired to the caller's console and, if asked, host input."""

from __future__ import annotations

import os

from firelet.builder.spec import INTERRUPT_REARM_INTERVAL_S, BuildInputs, ConsoleSpec, DeviceSpec, Wiring
from firelet.devices.legacy.serial import PORT_COUNT, Serial
from firelet.vstate.device_registry import BusKind, Slot

# COM1's PC/AT assignments.
SERIAL_PORT_BASE = 0x3F8
SERIAL_IRQ = 4
#: Bytes read from the host's stdin at a time for the guest console.
_STDIN_CHUNK = 64


def _plan(inputs: BuildInputs) -> list[tuple[str, ConsoleSpec]]:
    return [("serial", inputs.console)]


def _make(console: ConsoleSpec, wiring: Wiring) -> Serial:
    assert wiring.interrupt is not None
    vmm, loop = wiring.vmm, wiring.loop
    input_fd = console.input_fd
    reading = {"on": input_fd is not None}

    def resume_input() -> None:  # the guest drained its FIFO: read stdin again
        if input_fd is not None and not reading["on"]:
            reading["on"] = True
            loop.call_soon(lambda: loop.add_reader(input_fd, on_stdin))

    batch = None
    if vmm.coalesced_ring is not None:  # THR writes queue in KVM while THRE interrupts are off
        from firelet.vstate.coalesced import CoalescedPio

        batch = CoalescedPio(vmm.resources.vm_fd, vmm.coalesced_ring, SERIAL_PORT_BASE, 1,
                             defer_first=wiring.later)
    serial = Serial(wiring.interrupt, console.sink, on_input_space=resume_input, defer=loop.call_soon,
                    tx_batch=batch)
    wiring.on_close(serial.flush_output)
    if vmm.coalesced_ring is not None:  # the last queued bytes, while the ring can still be read
        vmm.coalesced_ring.before_close(serial.flush_batched)

    def tick() -> None:
        serial.flush_batched()
        serial.rearm_interrupt()

    loop.every(INTERRUPT_REARM_INTERVAL_S, tick)

    def on_stdin() -> None:
        assert input_fd is not None
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
    return serial


SERIAL_KIND = DeviceSpec(
    kind="serial",
    plan=_plan,
    placement=Slot(BusKind.PIO, ((SERIAL_PORT_BASE, PORT_COUNT),), irq=SERIAL_IRQ),
    make=_make,
)
