"""Firecracker's boot timer: one byte from the guest, one log line in Firecracker's words."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from firelet.arch.x86_64 import layout
from firelet.builder.device_manager import plan_virtio
from firelet.config.model import BootSource, Drive, VmConfig
from firelet.devices.pseudo.boot_timer import BOOT_COMPLETE, BootTimer, Timestamp, boot_time_line

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


def test_the_virtio_devices_move_up_one_window_behind_the_boot_timer() -> None:
    plain = plan_virtio(_config(3))
    behind = plan_virtio(_config(3), first_window=1)
    assert [slot.base for _, slot in plain] == [0xD0000000, 0xD0001000, 0xD0002000]
    assert [slot.base for _, slot in behind] == [0xD0001000, 0xD0002000, 0xD0003000]
    assert [slot.irq for _, slot in behind] == [slot.irq for _, slot in plain]  # the timer takes no IRQ
    assert layout.BOOT_TIMER_START == 0xD0000000


def test_microvm_boot_times_come_from_its_timer() -> None:
    from types import SimpleNamespace

    from firelet import MicroVM

    vm = MicroVM("/nonexistent/vmlinux", boot_timer=True)
    assert vm.boot_times == []  # not started
    timer = _timer([])
    timer.write(0, bytes([BOOT_COMPLETE]))
    vm.vmm = SimpleNamespace(devices={"boot_timer": timer})
    assert vm.boot_times == [(2_500_000, 812_345)]
    vm.vmm = SimpleNamespace(devices={})  # built without the timer
    assert vm.boot_times == []
