"""Save and restore of the UART, the i8042 and the boot timer, mid-operation.

The restored device is a fresh one from its constructor; given the same guest
accesses afterwards it must answer exactly as the original does.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firelet.devices.interrupt import CountingInterrupt
from firelet.devices.legacy import i8042 as k
from firelet.devices.legacy import serial as s
from firelet.devices.pseudo.boot_timer import BOOT_COMPLETE, BootTimer, Timestamp
from firelet.records import RecordError, from_dict, to_dict


def _through_dict(record: Any) -> Any:
    return from_dict(type(record), to_dict(record))


# -- the UART -------------------------------------------------------------------------------------
class _Uart:
    def __init__(self, capacity: int = 64) -> None:
        self.irq, self.sink = CountingInterrupt(), io.BytesIO()
        self.dev = s.Serial(self.irq, self.sink, input_capacity=capacity)

    def inb(self, offset: int) -> int:
        buf = bytearray(1)
        self.dev.read(offset, memoryview(buf))
        return buf[0]

    def outb(self, offset: int, value: int) -> None:
        self.dev.write(offset, bytes([value]))

    def restored(self) -> _Uart:
        other = _Uart(self.dev._capacity)
        other.dev.restore_state(_through_dict(self.dev.save_state()))
        return other


def test_a_uart_with_input_waiting_and_its_interrupt_pending_comes_back_the_same() -> None:
    uart = _Uart()
    uart.outb(s.FCR, s.FCR_ENABLE_FIFO)
    uart.outb(s.IER, s.IER_RDI)
    assert uart.dev.enqueue_input(b"hello") == 5 and uart.irq.count == 1
    assert uart.inb(s.DATA) == ord("h")
    state = uart.dev.save_state()
    assert state.rx == b"ello" and state.ier == s.IER_RDI

    back = uart.restored()
    assert back.dev.save_state() == state
    assert back.inb(s.IIR) == s.IIR_FIFO_ENABLED | s.IIR_RDI  # the receive interrupt is still pending
    assert back.inb(s.LSR) & s.LSR_DR
    back.dev.rearm_interrupt()  # the edge raised before the snapshot may be lost: raised again
    assert back.irq.count == 1
    assert bytes(back.inb(s.DATA) for _ in range(4)) == b"ello"
    assert back.inb(s.IIR) == s.IIR_FIFO_ENABLED | s.IIR_NO_INT and not back.inb(s.LSR) & s.LSR_DR


def test_a_uart_keeps_its_divisor_latch_and_a_thre_interrupt_not_yet_read() -> None:
    uart = _Uart()
    uart.outb(s.LCR, s.LCR_DLAB | 0x03)
    uart.outb(s.DATA, 1)  # 115200 baud, written through the latch
    uart.outb(s.LCR, 0x03)
    uart.outb(s.IER, s.IER_THRI)  # THRE becomes pending
    back = uart.restored()
    assert back.inb(s.IIR) & 0x0F == s.IIR_THRI
    back.outb(s.LCR, s.LCR_DLAB | 0x03)
    assert (back.inb(s.DATA), back.inb(s.IER)) == (1, 0)
    back.outb(s.LCR, 0x03)
    back.outb(s.DATA, ord("x"))
    assert back.sink.getvalue() == b"x"


def test_a_uart_refuses_more_input_than_it_holds_or_registers_wider_than_a_byte() -> None:
    uart = _Uart(capacity=8)
    uart.dev.enqueue_input(b"12345678")
    state = uart.dev.save_state()
    with pytest.raises(RecordError, match="holds 8 input bytes, more than its 4"):
        s.Serial(CountingInterrupt(), input_capacity=4).restore_state(state)
    with pytest.raises(RecordError, match="are not all bytes"):
        s.Serial(CountingInterrupt()).restore_state(from_dict(s.SerialState, to_dict(state) | {"lcr": 256}))


class _Batch:
    """KVM's coalesced ring, as the UART sees it: port writes the guest made without an exit."""

    def __init__(self, queued: list[tuple[int, int]] | None = None) -> None:
        self.active = False
        self.queued = queued or []

    def set_active(self, active: bool) -> None:
        self.active = active

    def take(self) -> list[tuple[int, int]]:
        out, self.queued = self.queued, []
        return out


def test_saving_a_uart_first_applies_the_writes_kvm_still_holds_and_a_restore_sets_batching_again() -> None:
    sink = io.BytesIO()
    batch = _Batch()
    uart = s.Serial(CountingInterrupt(), sink, tx_batch=batch)
    assert batch.active
    batch.queued = [(s.LCR, s.LCR_DLAB | 3), (s.DATA, 1), (s.LCR, 3), (s.DATA, ord("h")), (s.DATA, ord("i"))]
    state = uart.save_state()
    assert (state.dll, state.lcr) == (1, 3) and sink.getvalue() == b"hi" and not batch.queued
    for ier, batching in ((0, True), (s.IER_THRI, False)):
        other = _Batch()
        s.Serial(CountingInterrupt(), tx_batch=other).restore_state(
            _through_dict(s.SerialState(ier, 3, s.MCR_OUT2, 0, 0, 1, 0, False, b"")))
        assert other.active is batching


_UART_OPS = st.lists(st.one_of(
    st.tuples(st.just("out"), st.integers(0, 7), st.sampled_from([0, 1, 2, 3, 0x0F, 0x10, 0x80, 0x83, 0xC7, 0xFF])),
    st.tuples(st.just("in"), st.integers(0, 7), st.just(0)),
    st.tuples(st.just("input"), st.integers(0, 40), st.just(0)),
), max_size=40)


def _uart_step(uart: _Uart, op: tuple[str, int, int]) -> Any:
    kind, a, b = op
    fired = uart.irq.count
    if kind == "out":
        uart.outb(a, b)
        result: Any = None
    elif kind == "in":
        result = uart.inb(a)
    else:
        result = uart.dev.enqueue_input(bytes(range(a)))
    return result, uart.irq.count - fired


@settings(max_examples=150, deadline=None)
@given(before=_UART_OPS, after=_UART_OPS)
def test_any_reachable_uart_state_round_trips_and_answers_as_the_original(before: list[Any], after: list[Any]) -> None:
    uart = _Uart(capacity=32)
    for op in before:
        _uart_step(uart, op)
    back = uart.restored()
    assert back.dev.save_state() == uart.dev.save_state()
    sent_before = len(uart.sink.getvalue())
    for op in after:
        assert _uart_step(uart, op) == _uart_step(back, op)
    assert back.dev.save_state() == uart.dev.save_state()
    assert back.sink.getvalue() == uart.sink.getvalue()[sent_before:]


# -- the i8042 --------------------------------------------------------------------------------------
class _Ps2:
    def __init__(self) -> None:
        self.resets = 0
        self.kbd = CountingInterrupt()
        self.dev = k.I8042(self._reset, self.kbd)

    def _reset(self) -> None:
        self.resets += 1

    def restored(self) -> _Ps2:
        other = _Ps2()
        other.dev.restore_state(_through_dict(self.dev.save_state()))
        return other


def test_an_i8042_with_a_byte_queued_and_a_command_half_written_comes_back_the_same() -> None:
    ps2 = _Ps2()
    ps2.dev.inject_scancodes(bytes([0x1C, 0xF0, 0x1C]))  # "a" pressed and released
    assert ps2.kbd.count == 1 and ps2.dev.read_port(k.DATA_PORT) == 0x1C
    ps2.dev.write_port(k.DATA_PORT, k.KBD_CMD_SET_LEDS)  # the keyboard now waits for the LED byte
    state = ps2.dev.save_state()
    assert state.queue == ((0xF0, False), (0x1C, False), (k.KBD_ACK, False)) and state.pending_kbd == k.KBD_CMD_SET_LEDS

    back = ps2.restored()
    assert back.dev.save_state() == state
    assert back.dev.read_port(k.COMMAND_PORT) & k.STR_OBF
    assert [back.dev.read_port(k.DATA_PORT) for _ in range(3)] == [0xF0, 0x1C, k.KBD_ACK]
    assert back.kbd.count == 2  # one edge per byte that reached the output buffer after the first
    back.dev.write_port(k.DATA_PORT, 0x07)  # the LED byte is taken as the argument, and acknowledged
    assert back.dev.read_port(k.DATA_PORT) == k.KBD_ACK and back.dev.save_state().pending_kbd is None
    assert not back.dev.read_port(k.COMMAND_PORT) & k.STR_OBF


def test_an_i8042_refuses_aux_bytes_without_an_aux_port_and_a_queue_beyond_its_size() -> None:
    with_aux = k.I8042(lambda: None, CountingInterrupt(), CountingInterrupt())
    with_aux.write_port(k.COMMAND_PORT, k.CMD_WRITE_AUX_OUTBUF)
    with_aux.write_port(k.DATA_PORT, 0x5A)
    state = with_aux.save_state()
    assert state.queue == ((0x5A, True),)
    with pytest.raises(RecordError, match="AUX bytes but this controller has no AUX port"):
        _Ps2().dev.restore_state(state)
    with pytest.raises(RecordError, match="holds 65 bytes, more than its 64"):
        _Ps2().dev.restore_state(from_dict(k.I8042State, to_dict(state) | {"queue": [[1, False]] * 65}))


_PS2_OPS = st.lists(st.one_of(
    st.tuples(st.sampled_from([k.DATA_PORT, k.COMMAND_PORT]), st.booleans(),
              st.one_of(st.integers(0, 255), st.sampled_from([0x00, 0x01, 0x03, 0x20, 0x60, 0xAA, 0xD2, 0xED, 0xF0, 0xF2, 0xFF, 0xFE]))),
    st.tuples(st.just("inject"), st.just(False), st.binary(max_size=4)),
    # a keyboard command and its argument (scan set, LEDs, typematic), as atkbd sends them
    st.tuples(st.just("kbd"), st.just(True), st.tuples(st.sampled_from([0xF0, 0xED, 0xF3]), st.integers(0, 3))),
), max_size=40)


def _ps2_step(ps2: _Ps2, op: tuple[Any, bool, Any]) -> Any:
    port, write, value = op
    fired, resets = ps2.kbd.count, ps2.resets
    result = None
    if port == "inject":
        ps2.dev.inject_scancodes(value)
    elif port == "kbd":
        ps2.dev.write_port(k.DATA_PORT, value[0])
        ps2.dev.write_port(k.DATA_PORT, value[1])
    elif write:
        ps2.dev.write_port(port, value)
    else:
        result = ps2.dev.read_port(port)
    return result, ps2.kbd.count - fired, ps2.resets - resets


@settings(max_examples=150, deadline=None)
@given(before=_PS2_OPS, after=_PS2_OPS)
def test_any_reachable_i8042_state_round_trips_and_answers_as_the_original(before: list[Any], after: list[Any]) -> None:
    ps2 = _Ps2()
    for op in before:
        _ps2_step(ps2, op)
    back = ps2.restored()
    assert back.dev.save_state() == ps2.dev.save_state()
    for op in after:
        assert _ps2_step(ps2, op) == _ps2_step(back, op)
    assert back.dev.save_state() == ps2.dev.save_state()


# -- the boot timer -----------------------------------------------------------------------------------
def test_a_boot_timer_keeps_the_signals_it_saw_and_its_own_start() -> None:
    ticks = iter([Timestamp(3_000, 500), Timestamp(9_000, 700)])
    timer = BootTimer(Timestamp(1_000, 100), lambda line: None, clock=lambda: next(ticks))
    timer.write(0, bytes([BOOT_COMPLETE]))
    state = timer.save_state()
    assert state.boot_times == ((2_000, 400),)

    lines: list[str] = []
    back = BootTimer(Timestamp(8_000, 600), lines.append, clock=lambda: next(ticks))
    back.restore_state(_through_dict(state))
    assert back.boot_times == [(2_000, 400)]
    back.write(0, bytes([BOOT_COMPLETE]))  # a second boot after the restore counts from the new start
    assert back.boot_times == [(2_000, 400), (1_000, 100)] and len(lines) == 1
