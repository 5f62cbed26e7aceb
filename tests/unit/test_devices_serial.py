"""The 16550A UART, driven as Linux's 8250 driver probes and uses it."""

from __future__ import annotations

import io
import threading

from hypothesis import given
from hypothesis import strategies as st

from firelet.devices.interrupt import CountingInterrupt
from firelet.devices.legacy import serial as s


class _Sink(io.BytesIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1


def _uart(**kwargs) -> tuple[s.Serial, CountingInterrupt, _Sink]:  # type: ignore[no-untyped-def]
    irq, sink = CountingInterrupt(), _Sink()
    return s.Serial(irq, sink, **kwargs), irq, sink


def _in(uart: s.Serial, offset: int) -> int:
    buf = bytearray(1)
    uart.read(offset, memoryview(buf))
    return buf[0]


def _out(uart: s.Serial, offset: int, value: int) -> None:
    uart.write(offset, bytes([value]))


def test_autoconfig_probe_finds_a_16550a() -> None:
    """drivers/tty/serial/8250/8250_port.c autoconfig(), step by step."""
    uart, _, sink = _uart()
    # IER test: written bits read back, high nibble and UUE (bit 6) stay clear.
    _out(uart, s.IER, 0)
    assert _in(uart, s.IER) & 0x0F == 0
    _out(uart, s.IER, 0x0F)
    assert _in(uart, s.IER) & 0x0F == 0x0F
    _out(uart, s.IER, 0x40)
    assert not _in(uart, s.IER) & 0x40
    _out(uart, s.IER, 0)
    # Loopback test: MCR = LOOP | OUT2 | RTS must read back as DCD | CTS in MSR.
    save_mcr = _in(uart, s.MCR)
    _out(uart, s.MCR, s.MCR_LOOP | 0x0A)
    assert _in(uart, s.MSR) & 0xF0 == 0x90
    _out(uart, s.MCR, save_mcr)
    # FIFO test: with the FIFO enabled IIR bits 7:6 are 11 -> 16550A.
    _out(uart, s.LCR, 0xBF)
    _out(uart, 2, 0)  # EFR on enhanced parts, FCR here
    _out(uart, s.LCR, 0)
    _out(uart, s.FCR, s.FCR_ENABLE_FIFO)
    assert _in(uart, s.IIR) >> 6 == 3
    # Not an EFR part: with DLAB set offset 2 still reads the (non-zero) IIR.
    _out(uart, s.LCR, 0x80)
    assert _in(uart, 2) != 0
    # Not a TI16750: bit 5 of IIR never set.
    _out(uart, s.LCR, 0)
    _out(uart, s.FCR, s.FCR_ENABLE_FIFO | 0x20)
    assert _in(uart, s.IIR) >> 5 == 6
    # Scratch register keeps its value.
    _out(uart, s.SCR, 0xA5)
    assert _in(uart, s.SCR) == 0xA5
    assert sink.getvalue() == b""
    # LSR must not read 0xff ("LSR safety check engaged").
    assert _in(uart, s.LSR) == s.LSR_THRE | s.LSR_TEMT


def test_thre_interrupt_reasserts_on_enable() -> None:
    """serial8250_do_startup's THRE test: enabling ETBEI with an empty THR raises THRE."""
    uart, irq, _ = _uart()
    _out(uart, s.FCR, s.FCR_ENABLE_FIFO)
    _out(uart, s.IER, s.IER_THRI)
    assert irq.count == 1
    assert _in(uart, s.IIR) == 0xC0 | s.IIR_THRI
    assert _in(uart, s.IIR) == 0xC0 | s.IIR_NO_INT  # reading IIR cleared it
    _out(uart, s.IER, 0)
    _out(uart, s.IER, s.IER_THRI)
    assert _in(uart, s.IIR) & 0x0F == s.IIR_THRI
    assert irq.count == 2


def test_output_reaches_sink_with_thre_interrupts() -> None:
    uart, irq, sink = _uart()
    for byte in b"hi":
        _out(uart, s.DATA, byte)
    assert sink.getvalue() == b"hi" and sink.flushes == 2
    assert irq.count == 0  # THRE interrupt disabled
    _out(uart, s.IER, s.IER_THRI)
    for byte in b"there\n":
        _out(uart, s.DATA, byte)
    assert sink.getvalue() == b"hithere\n"
    # An edge when THRE becomes pending (on enabling); a burst adds none until the driver reads IIR.
    assert irq.count == 1
    assert _in(uart, s.IIR) & 0x0F == s.IIR_THRI
    _out(uart, s.DATA, ord("!"))
    assert irq.count == 2  # pending again after the IIR read: a new edge
    assert uart.tx_bytes == 9


def test_deferred_output_is_batched_per_line() -> None:
    deferred = []
    sink = _Sink()
    uart = s.Serial(CountingInterrupt(), sink, defer=deferred.append)
    for byte in b"login: ":
        _out(uart, s.DATA, byte)
    assert sink.getvalue() == b"" and len(deferred) == 1  # one flush scheduled for the whole prompt
    deferred.pop()()
    assert sink.getvalue() == b"login: "
    for byte in b"root\n":
        _out(uart, s.DATA, byte)
    assert sink.getvalue() == b"login: root\n"  # a newline goes out at once
    assert uart.tx_bytes == 12


def test_divisor_latch_does_not_transmit() -> None:
    uart, _, sink = _uart()
    _out(uart, s.LCR, s.LCR_DLAB | 0x03)
    _out(uart, s.DATA, 0x01)
    _out(uart, s.IER, 0x00)
    assert (_in(uart, s.DATA), _in(uart, s.IER)) == (0x01, 0x00)
    _out(uart, s.LCR, 0x03)
    assert sink.getvalue() == b"" and _in(uart, s.IER) == 0


def test_input_with_rda_interrupt() -> None:
    uart, irq, _ = _uart()
    assert uart.enqueue_input(b"x") == 1
    assert irq.count == 0  # ERBFI off
    _out(uart, s.IER, s.IER_RDI | s.IER_THRI)
    assert irq.count == 1
    assert _in(uart, s.IIR) & 0x0F == s.IIR_RDI  # received data outranks THRE
    uart.enqueue_input(b"yz")
    assert irq.count == 1  # data was already waiting: no new edge
    got = bytearray()
    while _in(uart, s.LSR) & s.LSR_DR:
        got.append(_in(uart, s.DATA))
    assert got == b"xyz" and uart.rx_bytes == 3
    assert _in(uart, s.IIR) & 0x0F == s.IIR_THRI
    uart.enqueue_input(b"!")
    assert irq.count == 2


def test_input_capacity_drops_and_reports_space() -> None:
    woken = []
    uart, _, _ = _uart(input_capacity=4, on_input_space=lambda: woken.append(1))
    assert uart.input_space() == 4
    assert uart.enqueue_input(b"abcdef") == 4
    assert uart.input_space() == 0 and uart.rx_dropped == 2
    assert _in(uart, s.DATA) == ord("a")
    assert woken == [1] and uart.input_space() == 1
    _in(uart, s.DATA)
    assert woken == [1]  # only the read that left a full queue wakes the loop


def test_fifo_clear_discards_input() -> None:
    uart, _, _ = _uart()
    uart.enqueue_input(b"stale")
    _out(uart, s.FCR, s.FCR_ENABLE_FIFO | s.FCR_CLEAR_RCVR)
    assert not _in(uart, s.LSR) & s.LSR_DR


def test_loopback_sends_bytes_back_not_out() -> None:
    uart, irq, sink = _uart()
    _out(uart, s.IER, s.IER_RDI)
    _out(uart, s.MCR, s.MCR_LOOP)
    _out(uart, s.DATA, 0x42)
    assert sink.getvalue() == b""
    assert _in(uart, s.DATA) == 0x42
    assert irq.count == 1


def test_broken_sink_does_not_raise() -> None:
    class Broken:
        def write(self, data: bytes) -> None:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            pass

    uart = s.Serial(CountingInterrupt(), Broken())
    _out(uart, s.DATA, 0x41)
    _out(uart, s.DATA, 0x42)
    assert uart.tx_dropped == 2


def test_concurrent_input_and_guest_reads() -> None:
    uart, _, _ = _uart(input_capacity=64)
    data = bytes(range(256)) * 8
    got = bytearray()

    def host() -> None:
        sent = 0
        while sent < len(data):  # as the event loop does: read only what fits
            room = uart.input_space()
            if room:
                sent += uart.enqueue_input(data[sent : sent + min(room, 13)])

    thread = threading.Thread(target=host)
    thread.start()
    while len(got) < len(data):
        if _in(uart, s.LSR) & s.LSR_DR:
            got.append(_in(uart, s.DATA))
    thread.join()
    assert got == data and uart.rx_dropped == 0


@given(st.lists(st.tuples(st.integers(0, 7), st.binary(min_size=0, max_size=4), st.booleans()), max_size=60))
def test_any_access_never_raises(accesses) -> None:
    uart, _, _ = _uart()
    for offset, data, is_read in accesses:
        if is_read:
            buf = bytearray(len(data))
            uart.read(offset, memoryview(buf))
        else:
            uart.write(offset, data)
        uart.enqueue_input(data)


def test_an_unacknowledged_interrupt_is_raised_again() -> None:
    uart, irq, _ = _uart()
    _out(uart, s.IER, s.IER_THRI)  # THRE pending: one edge
    assert irq.count == 1
    uart.rearm_interrupt()  # first look: pending, but it may be in flight
    assert irq.count == 1
    uart.rearm_interrupt()  # still not acknowledged a period later: the edge was lost
    assert irq.count == 2
    assert _in(uart, s.IIR) & 0x0F == s.IIR_THRI  # the driver finally sees it
    uart.rearm_interrupt()
    uart.rearm_interrupt()
    assert irq.count == 2  # acknowledged, nothing pending: quiet


def test_no_rearm_while_the_interrupt_is_disabled() -> None:
    uart, irq, _ = _uart()
    _out(uart, s.IER, s.IER_THRI)
    _out(uart, s.IER, 0)
    for _ in range(3):
        uart.rearm_interrupt()
    assert irq.count == 1


class _FakeBatch:
    """What KVM's coalesced ring would hold: THR writes the guest made without an exit."""

    def __init__(self) -> None:
        self.active = False
        self.queued: list[tuple[int, int]] = []
        self.switches: list[bool] = []

    def set_active(self, active: bool) -> None:
        self.active = active
        self.switches.append(active)

    def guest_writes(self, text: bytes) -> None:
        assert self.active, "a THR write is only queued while batching is on"
        self.queued += [(s.DATA, b) for b in text]

    def take(self) -> list[tuple[int, int]]:
        out, self.queued = self.queued, []
        return out


def test_tx_batching_is_on_exactly_while_thre_interrupts_and_loopback_are_off() -> None:
    batch = _FakeBatch()
    uart, _, _ = _uart(tx_batch=batch)
    assert batch.active  # reset state: IER = 0
    _out(uart, s.IER, s.IER_THRI)
    assert not batch.active
    _out(uart, s.IER, s.IER_RDI)
    assert batch.active
    _out(uart, s.MCR, s.MCR_LOOP | s.MCR_OUT2)
    assert not batch.active
    _out(uart, s.MCR, s.MCR_OUT2)
    assert batch.active
    assert batch.switches == [True, False, True, False, True]


def test_queued_writes_are_replayed_in_order_before_any_other_access() -> None:
    batch = _FakeBatch()
    uart, irq, sink = _uart(tx_batch=batch)
    batch.guest_writes(b"hel")
    assert _in(uart, s.LSR) & s.LSR_THRE  # LSR polls do not need the queue...
    assert sink.getvalue() == b""
    batch.guest_writes(b"lo\n")
    _out(uart, s.IER, s.IER_THRI)  # ...any other access replays it first
    assert sink.getvalue() == b"hello\n"
    assert irq.count == 1  # enabling THRI raises THRE once; replayed bytes raised nothing
    _out(uart, s.DATA, ord("!"))  # with THRI on, THR writes exit and are served directly
    assert sink.getvalue() == b"hello\n!"


def test_queued_divisor_writes_keep_the_dlab_state_they_were_made_in() -> None:
    batch = _FakeBatch()
    uart, _, sink = _uart(tx_batch=batch)
    _out(uart, s.LCR, s.LCR_DLAB | 0x03)
    batch.queued.append((s.DATA, 1))  # DLL = 1 (115200 baud), queued like any port-0 write
    _out(uart, s.LCR, 0x03)  # replayed before DLAB is cleared
    batch.guest_writes(b"x")
    uart.flush_batched()  # the event loop's periodic flush
    _out(uart, s.LCR, s.LCR_DLAB | 0x03)
    assert _in(uart, s.DATA) == 1
    assert sink.getvalue() == b"x"


class _LockedBatch(_FakeBatch):
    """The fake ring with KVM's guarantee: appends and takes do not interleave."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def guest_writes(self, text: bytes) -> None:
        with self._lock:
            super().guest_writes(text)

    def take(self) -> list[tuple[int, int]]:
        with self._lock:
            return super().take()


def test_bytes_leave_in_the_order_written_when_the_event_loop_flushes_meanwhile() -> None:
    # The vCPU thread replays the queue on a register access while the event loop's
    # periodic flush replays it too: whichever takes bytes first must also send them first.
    import sys
    import time

    batch = _LockedBatch()
    uart, _, sink = _uart(tx_batch=batch)
    expected = b"".join(b"%05d\n" % i for i in range(3000))
    done = threading.Event()

    def event_loop() -> None:
        while not done.is_set():
            uart.flush_batched()

    emit = uart._output.emit

    def slow_emit(data: bytes | bytearray) -> None:  # widen any gap between taking and sending
        time.sleep(0)
        emit(data)

    uart._output.emit = slow_emit  # type: ignore[method-assign]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    loop = threading.Thread(target=event_loop)
    loop.start()
    try:
        for i in range(0, len(expected), 3):
            batch.guest_writes(expected[i:i + 3])
            if i % 9 == 0:
                _in(uart, s.IIR)  # any access but LSR replays the queue first
    finally:
        done.set()
        loop.join()
        sys.setswitchinterval(interval)
    uart.flush_batched()
    assert sink.getvalue() == expected
