"""The PS/2 controller (i8042) with a keyboard and no mouse.

It exists for three things: Linux's i8042 and atkbd drivers probe it without
errors, ``reboot=k`` reaches the VMM (command 0xFE pulses the CPU reset line,
which calls ``reset_callback``), and the host can inject Ctrl-Alt-Del so a
guest shuts down cleanly. Bytes for the guest wait in a small queue; the head of
the queue is the output buffer (status OBF), and each byte that reaches the
output buffer raises IRQ 1 (or the AUX line for AUX bytes) if the command byte
enables it, since Linux's handler reads exactly one byte per interrupt.

The controller does not translate (command byte bit 6 clear), so the keyboard
speaks scan code set 2 and Linux's atkbd decodes set 2. With an AUX interrupt
line the AUX port exists with no mouse behind it: loop-back (0xD3) works, bytes
sent to the mouse (0xD4) are dropped. Without one (as the VMM wires it) there
is no AUX port, and the controller says so the way Linux's ``i8042_check_aux``
recognises at once: the loop-back byte does not come back as AUX data and the
AUX interface test reports a stuck clock line, so the guest skips the port
instead of spending 250 ms in its AUX IRQ test.

Command and status bits: Linux drivers/input/serio/i8042.h and the IBM PS/2
technical reference.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import deque
from collections.abc import Callable
from typing import ClassVar

from firelet.devices.interrupt import Interrupt
from firelet.log import get_logger
from firelet.records import RecordError

log = get_logger(__name__)

#: Ports on the PIO bus (see the class docstring for the two ways to insert them).
DATA_PORT = 0x60
COMMAND_PORT = 0x64
BUS_LENGTH = COMMAND_PORT - DATA_PORT + 1

STR_OBF = 0x01  # output buffer full
STR_IBF = 0x02  # input buffer full (never: we consume writes at once)
STR_SYS = 0x04  # system flag, mirrors command byte bit 2
STR_CMDDAT = 0x08  # last write went to the command port
STR_KEYLOCK = 0x10  # set = keyboard not inhibited (Linux warns "Keylock active" otherwise)
STR_AUXDATA = 0x20  # the output buffer holds a byte from the AUX port

CTR_KBDINT = 0x01
CTR_AUXINT = 0x02
CTR_SYS = 0x04
CTR_KBDDIS = 0x10
CTR_AUXDIS = 0x20
CTR_XLATE = 0x40
_CTR_DEFAULT = CTR_KBDINT | CTR_SYS

CMD_READ_CTR = 0x20
CMD_WRITE_CTR = 0x60
CMD_AUX_DISABLE = 0xA7
CMD_AUX_ENABLE = 0xA8
CMD_AUX_TEST = 0xA9
CMD_SELF_TEST = 0xAA
CMD_KBD_TEST = 0xAB
CMD_KBD_DISABLE = 0xAD
CMD_KBD_ENABLE = 0xAE
CMD_READ_OUTPUT_PORT = 0xD0
CMD_WRITE_OUTPUT_PORT = 0xD1
CMD_WRITE_KBD_OUTBUF = 0xD2
CMD_WRITE_AUX_OUTBUF = 0xD3  # "AUX loop": the byte comes back as AUX data
CMD_WRITE_AUX = 0xD4
CMD_PULSE_RESET = 0xFE

SELF_TEST_OK = 0x55
INTERFACE_TEST_OK = 0x00
INTERFACE_TEST_CLOCK_LOW = 0x01  # PS/2 interface test: "clock line stuck low"
#: Output port bit 0 is the CPU reset line (active low), bit 1 the A20 gate.
_OUTPUT_PORT_DEFAULT = 0x03

# Keyboard (port 0x60) commands and replies, PS/2 keyboard protocol.
KBD_ACK = 0xFA
KBD_BAT_OK = 0xAA
KBD_ECHO = 0xEE
KBD_CMD_SET_LEDS = 0xED
KBD_CMD_ECHO = 0xEE
KBD_CMD_SCANSET = 0xF0
KBD_CMD_GET_ID = 0xF2
KBD_CMD_SET_REP = 0xF3
KBD_CMD_RESET = 0xFF
KBD_ID = (0xAB, 0x83)  # an MF2 keyboard
_KBD_CMDS_WITH_ARG = (KBD_CMD_SET_LEDS, KBD_CMD_SCANSET, KBD_CMD_SET_REP)

#: Set-2 make/break codes for Ctrl, Alt, Del (Del is an E0-prefixed key).
CTRL_ALT_DEL = bytes((0x14, 0x11, 0xE0, 0x71, 0xE0, 0xF0, 0x71, 0xF0, 0x11, 0xF0, 0x14))

#: Bytes the guest has not read yet; a keyboard flood beyond this is dropped.
_QUEUE_CAP = 64


@dataclasses.dataclass(frozen=True)
class I8042State:
    """The controller's and the keyboard's state; ``queue`` is (byte, from AUX) waiting for the guest.

    The count of reset requests is the VMM's, not the guest's, and stays out.
    """

    VERSION: ClassVar[int] = 1

    queue: tuple[tuple[int, bool], ...]
    last: int
    ctr: int
    output_port: int
    status_cmd: bool
    pending_cmd: int | None
    pending_kbd: int | None
    scanset: int


class I8042:
    """Ports 0x60 (data) and 0x64 (status/command).

    Either insert the controller itself at ``DATA_PORT`` with length
    ``BUS_LENGTH`` (offset 0 is data, 4 is command, as Firecracker does; ports
    in between read 0xff; port 0x61 is served by KVM's in-kernel PIT before it
    could reach us), or insert ``port(DATA_PORT)`` and ``port(COMMAND_PORT)``
    one port wide each.
    """

    def __init__(
        self,
        reset_callback: Callable[[], None],
        kbd_interrupt: Interrupt,
        aux_interrupt: Interrupt | None = None,
    ) -> None:
        self._reset_callback = reset_callback
        self._kbd_interrupt = kbd_interrupt
        self._aux_interrupt = aux_interrupt
        self._lock = threading.Lock()
        self._queue: deque[tuple[int, bool]] = deque()  # (byte, from AUX)
        self._last = 0
        self._ctr = _CTR_DEFAULT
        self._output_port = _OUTPUT_PORT_DEFAULT
        self._status_cmd = False
        self._pending_cmd: int | None = None  # controller command awaiting its data byte
        self._pending_kbd: int | None = None  # keyboard command awaiting its argument
        self._scanset = 2
        self.reset_requests = 0

    # -- bus interface -------------------------------------------------------
    def read(self, offset: int, data: memoryview) -> None:
        if len(data) == 0:
            return
        port = DATA_PORT + offset
        value = self.read_port(port) if port in (DATA_PORT, COMMAND_PORT) else 0xFF
        data[0] = value
        for i in range(1, len(data)):
            data[i] = 0

    def write(self, offset: int, data: bytes | memoryview) -> None:
        port = DATA_PORT + offset
        if len(data) and port in (DATA_PORT, COMMAND_PORT):
            self.write_port(port, data[0])

    def port(self, port: int) -> _Port:
        """The bus device for ``DATA_PORT`` or ``COMMAND_PORT``."""
        if port not in (DATA_PORT, COMMAND_PORT):
            raise ValueError(f"the i8042 has no port {port:#x}")
        return _Port(self, port)

    def read_port(self, port: int) -> int:
        with self._lock:
            if port == COMMAND_PORT:
                return self._status()
            if not self._queue:
                return self._last  # an empty output buffer keeps its stale byte
            self._last, _ = self._queue.popleft()
            value = self._last
            fire = self._irq_for_head()
        if fire is not None:
            fire.trigger()
        return value

    def write_port(self, port: int, value: int) -> None:
        reset = False
        with self._lock:
            # The line is "OBF and enabled": raise an edge when that becomes true,
            # whether a byte arrived or the command byte just enabled the line.
            line_before = self._irq_for_head()
            if port == COMMAND_PORT:
                self._status_cmd = True
                reset = self._command(value)
            else:
                self._status_cmd = False
                self._data(value)
            fire = self._irq_for_head() if line_before is None else None
        if fire is not None:
            fire.trigger()
        if reset:
            self.reset_requests += 1
            self._reset_callback()

    # -- host side ----------------------------------------------------------
    def trigger_ctrl_alt_del(self) -> None:
        """Press and release Ctrl-Alt-Del on the keyboard (thread-safe)."""
        self.inject_scancodes(CTRL_ALT_DEL)

    def inject_scancodes(self, codes: bytes) -> None:
        """Queue keyboard bytes for the guest and raise IRQ 1 for the first."""
        with self._lock:
            was_empty = not self._queue
            for code in codes:
                self._push(code)
            fire = self._irq_for_head() if was_empty else None
        if fire is not None:
            fire.trigger()

    # -- snapshots ------------------------------------------------------------
    def save_state(self) -> I8042State:
        with self._lock:
            return I8042State(tuple(self._queue), self._last, self._ctr, self._output_port, self._status_cmd,
                              self._pending_cmd, self._pending_kbd, self._scanset)

    def restore_state(self, state: I8042State) -> None:
        """Take ``state`` over. The guest's interrupt for a queued byte was raised before the snapshot
        and lives on in the restored irqchip, so none is raised here."""
        if len(state.queue) > _QUEUE_CAP:
            raise RecordError(f"saved i8042 holds {len(state.queue)} bytes, more than its {_QUEUE_CAP}")
        values = [b for b, _ in state.queue] + [state.last, state.ctr, state.output_port, state.scanset]
        values += [v for v in (state.pending_cmd, state.pending_kbd) if v is not None]
        if not all(0 <= v <= 0xFF for v in values):
            raise RecordError("saved i8042 state has values that are not bytes")
        if any(aux for _, aux in state.queue) and self._aux_interrupt is None:
            raise RecordError("saved i8042 state has AUX bytes but this controller has no AUX port")
        with self._lock:
            self._queue = deque(state.queue)
            self._last, self._ctr, self._output_port = state.last, state.ctr, state.output_port
            self._status_cmd, self._pending_cmd = state.status_cmd, state.pending_cmd
            self._pending_kbd = state.pending_kbd
            self._scanset = state.scanset

    # -- internals (lock held) ----------------------------------------------
    def _status(self) -> int:
        status = STR_KEYLOCK
        if self._ctr & CTR_SYS:
            status |= STR_SYS
        if self._status_cmd:
            status |= STR_CMDDAT
        if self._queue:
            status |= STR_OBF
            if self._queue[0][1]:
                status |= STR_AUXDATA
        return status

    def _push(self, value: int, aux: bool = False) -> None:
        if len(self._queue) < _QUEUE_CAP:
            self._queue.append((value, aux))

    def _irq_for_head(self) -> Interrupt | None:
        """The line to raise for the byte now in the output buffer, if enabled."""
        if not self._queue:
            return None
        if self._queue[0][1]:
            return self._aux_interrupt if self._ctr & CTR_AUXINT else None
        return self._kbd_interrupt if self._ctr & CTR_KBDINT else None

    def _command(self, cmd: int) -> bool:
        """Run a controller command; returns True if it asks for a CPU reset."""
        self._pending_cmd = None
        if cmd == CMD_READ_CTR:
            self._push(self._ctr)
        elif cmd in (CMD_WRITE_CTR, CMD_WRITE_OUTPUT_PORT, CMD_WRITE_KBD_OUTBUF,
                     CMD_WRITE_AUX_OUTBUF, CMD_WRITE_AUX):
            self._pending_cmd = cmd
        elif cmd == CMD_SELF_TEST:
            self._ctr = _CTR_DEFAULT | (self._ctr & CTR_XLATE)
            self._push(SELF_TEST_OK)
        elif cmd == CMD_KBD_TEST or (cmd == CMD_AUX_TEST and self._aux_interrupt is not None):
            self._push(INTERFACE_TEST_OK)
        elif cmd == CMD_AUX_TEST:
            self._push(INTERFACE_TEST_CLOCK_LOW)  # no AUX port
        elif cmd == CMD_KBD_DISABLE:
            self._ctr |= CTR_KBDDIS
        elif cmd == CMD_KBD_ENABLE:
            self._ctr &= ~CTR_KBDDIS
        elif cmd == CMD_AUX_DISABLE:
            self._ctr |= CTR_AUXDIS
        elif cmd == CMD_AUX_ENABLE:
            self._ctr &= ~CTR_AUXDIS
        elif cmd == CMD_READ_OUTPUT_PORT:
            self._push(self._output_port)
        elif cmd & 0xF0 == 0xF0:
            # Pulse output lines: a 0 in bit 0 of the mask pulses CPU reset (0xFE).
            return not cmd & 0x01
        else:
            log.debug("i8042: ignoring controller command %#x", cmd)
        return False

    def _data(self, value: int) -> None:
        cmd, self._pending_cmd = self._pending_cmd, None
        if cmd == CMD_WRITE_CTR:
            self._ctr = value
        elif cmd == CMD_WRITE_OUTPUT_PORT:
            self._output_port = value | 0x01  # the reset line is pulsed only through 0xFE
        elif cmd == CMD_WRITE_KBD_OUTBUF:
            self._push(value)
        elif cmd == CMD_WRITE_AUX_OUTBUF:
            self._push(value, aux=self._aux_interrupt is not None)
        elif cmd == CMD_WRITE_AUX:
            pass  # no mouse is attached
        else:
            self._keyboard(value)

    def _keyboard(self, value: int) -> None:
        """A byte for the keyboard itself (PS/2 keyboard protocol)."""
        pending, self._pending_kbd = self._pending_kbd, None
        if pending is not None:
            self._push(KBD_ACK)
            if pending == KBD_CMD_SCANSET:
                if value == 0:
                    self._push(self._scanset)
                elif value in (1, 2, 3):
                    self._scanset = value
            return
        if value == KBD_CMD_RESET:
            self._scanset = 2
            self._push(KBD_ACK)
            self._push(KBD_BAT_OK)
        elif value == KBD_CMD_GET_ID:
            self._push(KBD_ACK)
            for byte in KBD_ID:
                self._push(byte)
        elif value == KBD_CMD_ECHO:
            self._push(KBD_ECHO)
        else:
            # Enable/disable scanning, set defaults, typematic, LEDs, ...: acknowledge.
            if value in _KBD_CMDS_WITH_ARG:
                self._pending_kbd = value
            self._push(KBD_ACK)


class _Port:
    """One i8042 port as a bus device (the bus hands us offset 0 for each)."""

    def __init__(self, controller: I8042, port: int) -> None:
        self._controller = controller
        self._port = port

    def read(self, offset: int, data: memoryview) -> None:
        if len(data) == 0:
            return
        data[0] = self._controller.read_port(self._port)
        for i in range(1, len(data)):
            data[i] = 0

    def write(self, offset: int, data: bytes | memoryview) -> None:
        if len(data):
            self._controller.write_port(self._port, data[0])
