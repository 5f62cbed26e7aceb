"""The i8042 controller, driven as Linux's i8042 and atkbd drivers probe it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from firelet.devices.interrupt import CountingInterrupt
from firelet.devices.legacy import i8042 as k
from firelet.vstate.bus import Bus


class Rig:
    def __init__(self, aux: bool = False) -> None:
        self.resets = 0
        self.kbd = CountingInterrupt()
        self.aux = CountingInterrupt() if aux else None
        self.dev = k.I8042(self._reset, self.kbd, self.aux)
        self.bus = Bus()
        self.bus.insert(self.dev, k.DATA_PORT, k.BUS_LENGTH)

    def _reset(self) -> None:
        self.resets += 1

    def inb(self, port: int) -> int:
        buf = bytearray(1)
        self.bus.read(port, memoryview(buf))
        return buf[0]

    def outb(self, port: int, value: int) -> None:
        self.bus.write(port, bytes([value]))

    def command(self, cmd: int, params: bytes = b"", replies: int = 0) -> bytes:
        """Linux's __i8042_command: wait IBF clear, write, then poll OBF for each reply."""
        assert not self.inb(k.COMMAND_PORT) & k.STR_IBF
        self.outb(k.COMMAND_PORT, cmd)
        for p in params:
            self.outb(k.DATA_PORT, p)
        out = bytearray()
        for _ in range(replies):
            assert self.inb(k.COMMAND_PORT) & k.STR_OBF, f"no reply to {cmd:#x}"
            out.append(self.inb(k.DATA_PORT))
        return bytes(out)

    def flush(self) -> bytes:
        out = bytearray()
        while self.inb(k.COMMAND_PORT) & k.STR_OBF:
            out.append(self.inb(k.DATA_PORT))
        return bytes(out)


def test_linux_controller_probe() -> None:
    rig = Rig(aux=True)
    assert rig.flush() == b""
    status = rig.inb(k.COMMAND_PORT)
    assert status & k.STR_KEYLOCK  # else Linux warns "Keylock active"
    assert status != 0xFF
    assert rig.command(k.CMD_SELF_TEST, replies=1) == b"\x55"
    ctr = rig.command(k.CMD_READ_CTR, replies=1)[0]
    assert ctr == rig.command(k.CMD_READ_CTR, replies=1)[0]  # a stable CTR
    assert not ctr & k.CTR_XLATE  # untranslated: atkbd speaks set 2
    ctr = (ctr | k.CTR_KBDDIS) & ~k.CTR_KBDINT
    rig.command(k.CMD_WRITE_CTR, bytes([ctr]))
    irqs = rig.kbd.count  # the reset CTR has KBDINT set, so replies so far raised IRQ 1
    assert irqs == 3
    assert rig.command(k.CMD_READ_CTR, replies=1)[0] == ctr
    assert rig.command(k.CMD_KBD_TEST, replies=1) == b"\x00"
    assert rig.command(k.CMD_AUX_TEST, replies=1) == b"\x00"
    # AUX loop: the byte comes back flagged as AUX data.
    rig.outb(k.COMMAND_PORT, k.CMD_WRITE_AUX_OUTBUF)
    rig.outb(k.DATA_PORT, 0x5A)
    assert rig.inb(k.COMMAND_PORT) & (k.STR_OBF | k.STR_AUXDATA) == k.STR_OBF | k.STR_AUXDATA
    assert rig.inb(k.DATA_PORT) == 0x5A
    # MUX probe answers with plain loop-back, so Linux decides "not a MUX".
    assert rig.command(k.CMD_WRITE_AUX_OUTBUF, b"\x56", replies=1) == b"\x56"
    rig.command(k.CMD_AUX_DISABLE)
    assert rig.command(k.CMD_READ_CTR, replies=1)[0] & k.CTR_AUXDIS
    rig.command(k.CMD_AUX_ENABLE)
    assert not rig.command(k.CMD_READ_CTR, replies=1)[0] & k.CTR_AUXDIS
    rig.command(k.CMD_KBD_DISABLE)
    assert rig.command(k.CMD_READ_CTR, replies=1)[0] & k.CTR_KBDDIS
    rig.command(k.CMD_KBD_ENABLE)
    assert not rig.command(k.CMD_READ_CTR, replies=1)[0] & k.CTR_KBDDIS
    assert rig.kbd.count == irqs  # KBDINT off from here on
    assert rig.command(k.CMD_READ_OUTPUT_PORT, replies=1)[0] & 0x01
    assert rig.resets == 0


def _enable_kbd_irq(rig: Rig) -> None:
    ctr = rig.command(k.CMD_READ_CTR, replies=1)[0]
    rig.command(k.CMD_WRITE_CTR, bytes([(ctr | k.CTR_KBDINT) & ~k.CTR_KBDDIS]))


def _kbd_command(rig: Rig, *data: int) -> bytes:
    """atkbd through ps2_command: bytes to port 0x60, replies via IRQ 1, one byte per interrupt."""
    before = rig.kbd.count
    for byte in data:
        rig.outb(k.DATA_PORT, byte)
    out = bytearray()
    while rig.inb(k.COMMAND_PORT) & k.STR_OBF:
        out.append(rig.inb(k.DATA_PORT))
    assert rig.kbd.count - before == len(out)
    return bytes(out)


def test_without_an_aux_line_linux_finds_no_aux_port_at_once() -> None:
    # Linux's i8042_check_aux: an AUX loop that does not come back as AUX data, then an
    # interface test that reports a fault, mean "no AUX port", with no 250 ms IRQ test.
    rig = Rig()
    rig.outb(k.COMMAND_PORT, k.CMD_WRITE_AUX_OUTBUF)
    rig.outb(k.DATA_PORT, 0x5A)
    status = rig.inb(k.COMMAND_PORT)
    assert status & k.STR_OBF and not status & k.STR_AUXDATA
    rig.inb(k.DATA_PORT)
    assert rig.command(k.CMD_AUX_TEST, replies=1) not in (b"\x00", b"\xfa", b"\xff")


def test_atkbd_probe_over_irq1() -> None:
    rig = Rig()
    _enable_kbd_irq(rig)
    assert _kbd_command(rig, 0xFF) == b"\xfa\xaa"
    assert _kbd_command(rig, 0xF2) == b"\xfa\xab\x83"
    assert _kbd_command(rig, 0xF5) == b"\xfa"
    assert _kbd_command(rig, 0xF0, 0x00) == b"\xfa\xfa\x02"
    assert _kbd_command(rig, 0xF3, 0x00) == b"\xfa\xfa"
    assert _kbd_command(rig, 0xED, 0x07) == b"\xfa\xfa"
    assert _kbd_command(rig, 0xF4) == b"\xfa"
    assert _kbd_command(rig, 0xEE) == b"\xee"


def test_reboot_k_calls_reset_callback() -> None:
    rig = Rig()
    while rig.inb(k.COMMAND_PORT) & k.STR_IBF:  # kb_wait()
        pass
    rig.outb(k.COMMAND_PORT, k.CMD_PULSE_RESET)
    assert rig.resets == 1 and rig.dev.reset_requests == 1
    rig.outb(k.COMMAND_PORT, 0xFF)  # pulses nothing
    assert rig.resets == 1


def test_ctrl_alt_del_reaches_guest_with_interrupts() -> None:
    rig = Rig()
    _enable_kbd_irq(rig)
    before = rig.kbd.count
    rig.dev.trigger_ctrl_alt_del()
    assert rig.kbd.count == before + 1
    got = bytearray()
    while rig.inb(k.COMMAND_PORT) & k.STR_OBF:
        assert not rig.inb(k.COMMAND_PORT) & k.STR_AUXDATA
        got.append(rig.inb(k.DATA_PORT))
    # Ctrl, Alt, Del pressed; Del, Alt, Ctrl released (scan code set 2).
    assert bytes(got) == bytes.fromhex("14 11 e071 e0f071 f011 f014")
    assert rig.kbd.count == before + len(got)


def test_ctrl_alt_del_without_kbd_irq_waits_for_enable() -> None:
    rig = Rig()
    rig.command(k.CMD_WRITE_CTR, bytes([k.CTR_SYS]))
    rig.dev.trigger_ctrl_alt_del()
    assert rig.kbd.count == 0
    assert rig.inb(k.COMMAND_PORT) & k.STR_OBF
    rig.command(k.CMD_WRITE_CTR, bytes([k.CTR_SYS | k.CTR_KBDINT]))
    assert rig.kbd.count == 1  # enabling the line with a byte waiting raises it
    assert rig.inb(k.DATA_PORT) == 0x14


def test_aux_loop_raises_aux_interrupt_when_enabled() -> None:
    rig = Rig(aux=True)
    rig.command(k.CMD_WRITE_CTR, bytes([k.CTR_SYS | k.CTR_AUXINT]))
    rig.command(k.CMD_WRITE_AUX_OUTBUF, b"\xa5")
    assert rig.aux.count == 1 and rig.kbd.count == 0
    assert rig.inb(k.DATA_PORT) == 0xA5


def test_empty_data_port_keeps_last_byte() -> None:
    rig = Rig()
    rig.command(k.CMD_SELF_TEST, replies=1)
    assert rig.inb(k.DATA_PORT) == 0x55
    assert rig.inb(0x62) == 0xFF  # between the two ports


def test_single_port_wrappers() -> None:
    resets = []
    dev = k.I8042(lambda: resets.append(1), CountingInterrupt())
    bus = Bus()
    bus.insert(dev.port(k.DATA_PORT), k.DATA_PORT, 1)
    bus.insert(dev.port(k.COMMAND_PORT), k.COMMAND_PORT, 1)
    bus.write(k.COMMAND_PORT, bytes([k.CMD_SELF_TEST]))
    buf = bytearray(1)
    bus.read(k.DATA_PORT, memoryview(buf))
    assert buf[0] == 0x55
    bus.write(k.COMMAND_PORT, bytes([k.CMD_PULSE_RESET]))
    assert resets == [1]


@given(st.lists(st.tuples(st.sampled_from([k.DATA_PORT, k.COMMAND_PORT]), st.integers(0, 255), st.booleans()),
                max_size=200))
def test_any_port_traffic_never_raises(ops) -> None:
    rig = Rig(aux=True)
    for port, value, is_read in ops:
        if is_read:
            rig.inb(port)
        else:
            rig.outb(port, value)
    assert len(rig.flush()) <= 64
