"""Firecracker's boot timer: one byte from the guest, one log line in Firecracker's words."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from firelet.arch.x86_64 import layout
from firelet.builder.device_manager import plan_devices
from firelet.builder.registry import DEVICE_KINDS
from firelet.builder.spec import BuildInputs, ConsoleSpec
from firelet.config.model import BootSource, Drive, VmConfig
from firelet.devices.legacy.console import NullSink
from firelet.devices.pseudo.boot_timer import BOOT_COMPLETE, BootTimer, Timestamp, boot_time_line
from firelet.vstate.device_registry import BusKind, DeviceEntry, DeviceRegistry, Slot

#: What Firecracker's own tests parse out of its log (tests/integration_tests/performance/test_boottime.py).
FIRECRACKER_REGEX = re.compile(r"Guest-boot-time\s+\=\s+(\d+)\s+us")


def _timer(reported: list[str]) -> BootTimer:
    ticks = iter([Timestamp(1_234_567 + 2_500_000, 40_000 + 812_345)])
    return BootTimer(Timestamp(1_234_567, 40_000), reported.append, clock=lambda: next(ticks))


def test_the_boot_complete_byte_logs_wall_and_cpu_time_since_the_start() -> None:
    reported: list[str] = []
    timer = _timer(reported)
    timer.write(0, bytes([BOOT_COMPLETE]))
    assert reported == ["Guest-boot-time = 2500000 us 2500 ms, 812345 CPU us 812 CPU ms"]
    assert timer.boot_times == [(2_500_000, 812_345)]
    assert FIRECRACKER_REGEX.search(reported[0])[1] == "2500000"


def test_short_times_are_padded_as_firecracker_pads_them() -> None:
    line = boot_time_line(Timestamp(0, 0), Timestamp(4_321, 99))
    assert line == "Guest-boot-time =   4321 us 4 ms,     99 CPU us 0 CPU ms"


@given(offset=st.integers(0, layout.VIRTIO_MMIO_SIZE - 1), data=st.binary(min_size=1, max_size=8))
def test_any_other_write_is_ignored_and_reads_are_zero(offset: int, data: bytes) -> None:
    reported: list[str] = []
    timer = BootTimer(Timestamp(0, 0), reported.append)
    buf = bytearray(b"\xff" * len(data))
    timer.read(offset, memoryview(buf))
    assert buf == bytes(len(data))
    if (offset, data) != (0, bytes([BOOT_COMPLETE])):
        timer.write(offset, data)
        assert reported == []


def _config(drives: int) -> VmConfig:
    return VmConfig(boot_source=BootSource(kernel_image_path="/k"),
                    drives=[Drive(drive_id=f"d{i}", path_on_host=f"/d{i}", is_root_device=i == 0, is_read_only=False)
                            for i in range(drives)])


def _slots(timer: BootTimer | None) -> dict[str, Slot]:
    plan = plan_devices(BuildInputs(_config(3), ConsoleSpec(NullSink()), timer), DEVICE_KINDS)
    return {p.spec.kind + ":" + p.device_id: p.slot for p in plan if p.slot.bus is BusKind.MMIO}


def test_the_virtio_devices_move_up_one_window_behind_the_boot_timer() -> None:
    plain = _slots(None)
    behind = _slots(_timer([]))
    assert list(plain) == ["block:d0", "block:d1", "block:d2"]
    assert [s.base for s in plain.values()] == [0xD0000000, 0xD0001000, 0xD0002000]
    assert list(behind) == ["boot_timer:boot_timer", "block:d0", "block:d1", "block:d2"]
    assert [s.base for s in behind.values()] == [0xD0000000, 0xD0001000, 0xD0002000, 0xD0003000]
    assert behind["boot_timer:boot_timer"].irq is None  # the timer takes no IRQ
    assert [s.irq for s in plain.values()] == [s.irq for k, s in behind.items() if k != "boot_timer:boot_timer"]
    assert layout.BOOT_TIMER_START == 0xD0000000


def test_microvm_boot_times_come_from_its_timer() -> None:
    from types import SimpleNamespace

    from firelet import MicroVM

    vm = MicroVM("/nonexistent/vmlinux", boot_timer=True)
    assert vm.boot_times == []  # not started
    timer = _timer([])
    timer.write(0, bytes([BOOT_COMPLETE]))
    devices = DeviceRegistry()
    devices.add(DeviceEntry("boot_timer", "boot_timer", timer, Slot(BusKind.MMIO, ((layout.BOOT_TIMER_START, 1),))))
    vm.vmm = SimpleNamespace(devices=devices)
    assert vm.boot_times == [(2_500_000, 812_345)]
    vm.vmm = SimpleNamespace(devices=DeviceRegistry())  # built without the timer
    assert vm.boot_times == []
