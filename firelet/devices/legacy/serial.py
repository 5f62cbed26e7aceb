"""A 16550A UART, as Linux's 8250 driver probes and drives it (the guest console).

Transmission is instant: a byte written to THR goes straight to the sink, so
THRE and TEMT always read as set and a THRE interrupt is re-raised after every
byte. The interrupt line is an edge (irqfd): we trigger it whenever an enabled
interrupt condition becomes true, as the 8250 driver's handler then reads IIR
until nothing is pending.
Transmitted bytes go to the sink through :class:`~firelet.devices.legacy.output.LineOutput`
(a line at a time).

Receive side: one bounded queue of ``input_capacity`` bytes stands for the
16550's FIFO plus a host-side buffer. ``enqueue_input`` takes at most
``input_space()`` bytes and drops (and counts) the rest, so the event loop
should read no more than ``input_space()`` from stdin and stop polling stdin
while it is 0; ``on_input_space`` (if given) is called when a guest read makes
room again, so the loop can resume.

Transmit batching (optional ``tx_batch``): while THRE interrupts are off
(and not in loopback), nothing the guest can observe depends on when a THR
write is processed, so the VMM may let KVM queue those writes instead of
exiting for each (coalesced I/O, see firelet.vstate.coalesced). Every other
access first replays the queued writes, so the guest's order is kept; the
event loop flushes the rest periodically (``flush_batched``).

Register map and bits: PC16550D datasheet, and Linux include/uapi/linux/serial_reg.h.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import deque
from collections.abc import Callable
from typing import ClassVar, Protocol

from firelet.devices.interrupt import Interrupt
from firelet.devices.legacy.output import LineOutput, Sink
from firelet.records import RecordError

#: Port offsets from the base (0x3f8 for COM1). DLAB=1 turns 0/1 into DLL/DLM.
DATA = 0  # RBR (read) / THR (write)
IER = 1
IIR = 2  # read
FCR = 2  # write
LCR = 3
MCR = 4
LSR = 5
MSR = 6
SCR = 7
#: One port per register: the width of the UART's range on the port-I/O bus.
PORT_COUNT = 8

IER_RDI = 0x01  # received data available
IER_THRI = 0x02  # transmitter holding register empty
IER_RLSI = 0x04  # receiver line status
IER_MSI = 0x08  # modem status
_IER_MASK = 0x0F  # a 16550A keeps only these (Linux's autoconfig checks UUE, bit 6, reads 0)

IIR_NO_INT = 0x01
IIR_MSI = 0x00
IIR_THRI = 0x02
IIR_RDI = 0x04
IIR_FIFO_ENABLED = 0xC0  # both bits set: "16550A" to autoconfig

FCR_ENABLE_FIFO = 0x01
FCR_CLEAR_RCVR = 0x02
FCR_CLEAR_XMIT = 0x04

LCR_DLAB = 0x80

MCR_DTR = 0x01
MCR_RTS = 0x02
MCR_OUT1 = 0x04
MCR_OUT2 = 0x08
MCR_LOOP = 0x10
_MCR_MASK = 0x1F

LSR_DR = 0x01
LSR_THRE = 0x20
LSR_TEMT = 0x40

MSR_CTS = 0x10
MSR_DSR = 0x20
MSR_RI = 0x40
MSR_DCD = 0x80
#: Outside loopback the "cable" says a terminal is present and ready.
_MSR_DEFAULT = MSR_DCD | MSR_DSR | MSR_CTS

#: 115200 / 12 = 9600 baud, the reset divisor.
_DEFAULT_DIVISOR = 12
#: Receive queue capacity: the 16550A's 16-byte FIFO plus room for a pasted line.
DEFAULT_INPUT_CAPACITY = 4096


@dataclasses.dataclass(frozen=True)
class SerialState:
    """Every register the guest wrote, the bytes waiting for it, and a THRE interrupt not yet read.

    The pending interrupts follow from these (received data while ``rx`` is not
    empty, THRE while ``thre_pending``). Output still buffered on its way to the
    sink and the byte counters belong to the host side and stay out.
    """

    VERSION: ClassVar[int] = 1

    ier: int
    lcr: int
    mcr: int
    fcr: int
    scr: int
    dll: int
    dlm: int
    thre_pending: bool
    rx: bytes


class TxBatch(Protocol):
    """Where queued THR writes come from (firelet.vstate.coalesced.CoalescedPio)."""

    active: bool

    def set_active(self, active: bool, /) -> None: ...

    def take(self) -> list[tuple[int, int]]: ...


class Serial:
    """COM port registers at offsets 0..7 of a bus range; see the module docstring."""

    def __init__(
        self,
        interrupt: Interrupt,
        sink: Sink | None = None,
        *,
        input_capacity: int = DEFAULT_INPUT_CAPACITY,
        on_input_space: Callable[[], None] | None = None,
        defer: Callable[[Callable[[], None]], None] | None = None,
        tx_batch: TxBatch | None = None,
    ) -> None:
        """``defer(fn)`` runs ``fn`` soon on another thread (the event loop's ``call_soon``);
        with it, output is batched per line instead of written byte by byte."""
        self._interrupt = interrupt
        self._output = LineOutput(sink, defer)
        self._capacity = max(1, input_capacity)
        self._on_input_space = on_input_space
        self._lock = threading.Lock()
        self._rx: deque[int] = deque()
        self.rx_bytes = 0
        self.rx_dropped = 0
        self._ier = 0
        self._lcr = 0x03  # 8N1
        self._mcr = MCR_OUT2
        self._fcr = 0
        self._scr = 0
        self._dll = _DEFAULT_DIVISOR
        self._dlm = 0
        self._thre_pending = False  # cleared by reading IIR that reports it, set when THR empties
        # What the guest has acknowledged since the last `rearm_interrupt` (see there).
        self._acked_since_poll = True
        self._batch = tx_batch
        self._update_batching()

    # -- bus interface ------------------------------------------------------
    def read(self, offset: int, data: memoryview) -> None:
        if len(data) == 0:
            return
        out = fire = None
        if offset == LSR:  # the console polls LSR before every byte: keep it cheap
            # (queued THR writes change nothing LSR shows: transmission is instant)
            value = (LSR_DR if self._rx else 0) | LSR_THRE | LSR_TEMT
            space_freed = False
        else:
            with self._lock:
                if self._batch is not None:
                    out, fire = self._replay_batch()
                    if out:  # sent under the lock: bytes leave in the order they were taken
                        self._output.emit(out)
                value, space_freed = self._read_register(offset)
        data[0] = value
        for i in range(1, len(data)):
            data[i] = 0
        if fire:
            self._interrupt.trigger()
        if space_freed and self._on_input_space is not None:
            self._on_input_space()

    def write(self, offset: int, data: bytes | memoryview) -> None:
        if len(data) == 0:
            return
        with self._lock:
            if self._batch is None:
                byte, fire = self._write_register(offset, data[0])
                out: bytes | bytearray | None = None if byte is None else bytes((byte,))
            else:
                replayed, fire = self._replay_batch()
                byte, fired = self._write_register(offset, data[0])
                if byte is not None:
                    replayed.append(byte)
                out = replayed
                fire = fire or fired
                if offset in (IER, MCR):
                    self._update_batching()
            if out:  # under the lock, like every send: the event loop may be replaying too
                self._output.emit(out)
        if fire:
            self._interrupt.trigger()

    def flush_batched(self) -> None:
        """Process THR writes still queued (the event loop calls this now and then)."""
        if self._batch is None:
            return
        with self._lock:
            out, fire = self._replay_batch()
            if out:
                self._output.emit(out)
        if fire:
            self._interrupt.trigger()

    def _replay_batch(self) -> tuple[bytearray, bool]:
        """Apply the queued writes (lock held); returns the bytes they send and whether to raise the line."""
        out, fire = bytearray(), False
        for offset, value in self._batch.take():  # type: ignore[union-attr]
            byte, fired = self._write_register(offset, value)
            if byte is not None:
                out.append(byte)
            fire = fire or fired
        return out, fire

    def _update_batching(self) -> None:
        """Batch THR writes exactly while THRE interrupts and loopback are off (lock held)."""
        if self._batch is None:
            return
        want = not self._ier & IER_THRI and not self._mcr & MCR_LOOP
        if want != self._batch.active:
            self._batch.set_active(want)

    # -- host side ----------------------------------------------------------
    def input_space(self) -> int:
        """How many bytes ``enqueue_input`` accepts right now."""
        with self._lock:
            return self._capacity - len(self._rx)

    def enqueue_input(self, data: bytes) -> int:
        """Queue host input for the guest (thread-safe); returns how many bytes were taken."""
        with self._lock:
            was_empty = not self._rx
            taken = min(len(data), self._capacity - len(self._rx))
            self._rx.extend(data[:taken])
            self.rx_dropped += len(data) - taken
            fire = was_empty and taken > 0 and bool(self._ier & IER_RDI)
        if fire:
            self._interrupt.trigger()
        return taken

    def rearm_interrupt(self) -> None:
        """Raise the line again if an enabled interrupt has waited unacknowledged since the last call.

        The line is an edge (irqfd), and an edge the guest's IOAPIC drops (one that
        arrives while the pin is masked, say) is gone, while a 16550's real line stays
        asserted. Without a new edge the 8250 driver would wait for THRE forever and
        the tty would stall. Called periodically by the event loop, this makes a lost
        edge cost one period instead of the console.
        """
        with self._lock:
            waiting = (bool(self._ier & IER_THRI) and self._thre_pending) or (
                bool(self._ier & IER_RDI) and bool(self._rx)
            )
            fire = waiting and not self._acked_since_poll
            self._acked_since_poll = not waiting
        if fire:
            self._interrupt.trigger()

    # -- snapshots ------------------------------------------------------------
    def save_state(self) -> SerialState:
        """The UART's state (queued THR writes are applied first: they are the guest's)."""
        self.flush_batched()
        with self._lock:
            return SerialState(self._ier, self._lcr, self._mcr, self._fcr, self._scr, self._dll, self._dlm,
                               self._thre_pending, bytes(self._rx))

    def restore_state(self, state: SerialState) -> None:
        """Take ``state`` over; a pending interrupt is raised again at the next :meth:`rearm_interrupt`."""
        if len(state.rx) > self._capacity:
            raise RecordError(f"saved UART holds {len(state.rx)} input bytes, more than its {self._capacity}")
        registers = (state.ier, state.lcr, state.mcr, state.fcr, state.scr, state.dll, state.dlm)
        if not all(0 <= value <= 0xFF for value in registers):
            raise RecordError(f"saved UART registers {registers} are not all bytes")
        with self._lock:
            self._ier, self._lcr, self._mcr = state.ier & _IER_MASK, state.lcr, state.mcr & _MCR_MASK
            self._fcr, self._scr, self._dll, self._dlm = state.fcr, state.scr, state.dll, state.dlm
            self._thre_pending = state.thre_pending
            self._rx = deque(state.rx)
            self._acked_since_poll = False  # an edge raised before the snapshot may be lost
            self._update_batching()

    @property
    def tx_bytes(self) -> int:
        return self._output.sent

    @property
    def tx_dropped(self) -> int:
        return self._output.dropped

    def flush_output(self) -> None:
        """Write out batched guest output (thread-safe)."""
        self._output.flush()

    # -- registers ----------------------------------------------------------
    def _read_register(self, offset: int) -> tuple[int, bool]:
        dlab = self._lcr & LCR_DLAB
        if offset == DATA:
            if dlab:
                return self._dll, False
            if not self._rx:
                return 0, False
            was_full = len(self._rx) >= self._capacity
            self.rx_bytes += 1
            self._acked_since_poll = True
            return self._rx.popleft(), was_full
        if offset == IER:
            return (self._dlm if dlab else self._ier), False
        if offset == IIR:
            return self._read_iir(), False
        if offset == LCR:
            return self._lcr, False
        if offset == MCR:
            return self._mcr, False
        if offset == LSR:
            return (LSR_DR if self._rx else 0) | LSR_THRE | LSR_TEMT, False
        if offset == MSR:
            return self._msr(), False
        if offset == SCR:
            return self._scr, False
        return 0xFF, False

    def _read_iir(self) -> int:
        fifo = IIR_FIFO_ENABLED if self._fcr & FCR_ENABLE_FIFO else 0
        # Priorities (16550D table 4): line status > received data > THRE > modem status.
        if self._ier & IER_RDI and self._rx:
            return fifo | IIR_RDI
        if self._ier & IER_THRI and self._thre_pending:
            self._thre_pending = False  # reading IIR that identifies THRE clears it
            self._acked_since_poll = True
            return fifo | IIR_THRI
        return fifo | IIR_NO_INT

    def _msr(self) -> int:
        if not self._mcr & MCR_LOOP:
            return _MSR_DEFAULT
        # Loopback wires the modem outputs back to the inputs (datasheet §8.6).
        msr = 0
        if self._mcr & MCR_RTS:
            msr |= MSR_CTS
        if self._mcr & MCR_DTR:
            msr |= MSR_DSR
        if self._mcr & MCR_OUT1:
            msr |= MSR_RI
        if self._mcr & MCR_OUT2:
            msr |= MSR_DCD
        return msr

    def _write_register(self, offset: int, value: int) -> tuple[int | None, bool]:
        """Apply a write; returns (byte for the sink or None, whether to raise the line)."""
        dlab = self._lcr & LCR_DLAB
        if offset == DATA:
            if dlab:
                self._dll = value
                return None, False
            return self._transmit(value)
        if offset == IER:
            if dlab:
                self._dlm = value
                return None, False
            old, self._ier = self._ier, value & _IER_MASK
            fire = False
            if self._ier & IER_THRI and not old & IER_THRI:
                self._thre_pending = True  # THR is always empty: enabling ETBEI raises THRE
                fire = True
            if self._ier & IER_RDI and not old & IER_RDI and self._rx:
                fire = True
            return None, fire
        if offset == FCR:
            self._fcr = value & 0xC9
            if value & FCR_CLEAR_RCVR:
                self._rx.clear()
            return None, False
        if offset == LCR:
            self._lcr = value
        elif offset == MCR:
            self._mcr = value & _MCR_MASK
        elif offset == SCR:
            self._scr = value
        # LSR and MSR are read-only; writes are ignored.
        return None, False

    def _transmit(self, value: int) -> tuple[int | None, bool]:
        out: int | None = value
        fire = False
        if self._mcr & MCR_LOOP:
            out = None  # loopback: the byte comes back on the receive side, not the wire
            if len(self._rx) < self._capacity:
                fire = not self._rx and bool(self._ier & IER_RDI)
                self._rx.append(value)
        if self._ier & IER_THRI and not self._thre_pending:
            # The line is an edge: raise it when THRE becomes pending, not again for every
            # byte of a burst the driver writes before it reads IIR.
            self._thre_pending = True
            fire = True
        return out, fire
