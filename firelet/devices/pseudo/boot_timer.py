"""Firecracker's boot timer: the guest says "booted" with one byte; the VMM logs how long it took.

With ``--boot-timer`` Firecracker puts this device in the first MMIO window
(0xd0000000 in its layout before PCI support, which firelet's follows: the
virtio devices move up one window). A guest's init writes the byte 123 at
offset 0, e.g. ``devmem 0xd0000000 8 123`` through ``/dev/mem``, and the VMM
logs, in Firecracker's words::

    Guest-boot-time =  12345 us 12 ms,   6789 CPU us 6 CPU ms

counted from the start request (``InstanceStart``, or the config file's start)
in wall time and in the VMM process's CPU time. Any other access is ignored and
reads as zero: the window is the guest's to poke.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import ClassVar, NamedTuple

#: Firecracker's MAGIC_VALUE_SIGNAL_GUEST_BOOT_COMPLETE (src/vmm/src/devices/pseudo/boot_timer.rs).
BOOT_COMPLETE = 123


class Timestamp(NamedTuple):
    """A moment in wall (monotonic) time and in this process's CPU time, both in µs."""

    wall_us: int
    cpu_us: int

    @classmethod
    def now(cls) -> Timestamp:
        return cls(time.monotonic_ns() // 1000, time.process_time_ns() // 1000)


def boot_time_line(start: Timestamp, end: Timestamp) -> str:
    """Firecracker's log line for a boot from ``start`` to ``end``."""
    wall, cpu = end.wall_us - start.wall_us, end.cpu_us - start.cpu_us
    return f"Guest-boot-time = {wall:>6} us {wall // 1000} ms, {cpu:>6} CPU us {cpu // 1000} CPU ms"


@dataclasses.dataclass(frozen=True)
class BootTimerState:
    """The boot-complete signals seen, as ``(wall_us, cpu_us)`` since the start.

    The start itself is a moment of the saving process's clocks, meaningless in
    another process: a restored timer keeps the start it was constructed with.
    """

    VERSION: ClassVar[int] = 1

    boot_times: tuple[tuple[int, int], ...]


class BootTimer:
    """Reports each boot-complete signal through ``report`` (the VMM's log)."""

    def __init__(self, start: Timestamp, report: Callable[[str], None],
                 clock: Callable[[], Timestamp] = Timestamp.now) -> None:
        self.start = start
        self._report = report
        self._clock = clock
        self._lock = threading.Lock()
        #: Each signal's time since the start, ``(wall_us, cpu_us)`` (a guest may signal more than once).
        self.boot_times: list[Timestamp] = []

    def save_state(self) -> BootTimerState:
        with self._lock:
            return BootTimerState(tuple((t.wall_us, t.cpu_us) for t in self.boot_times))

    def restore_state(self, state: BootTimerState) -> None:
        with self._lock:
            self.boot_times = [Timestamp(wall, cpu) for wall, cpu in state.boot_times]

    def read(self, offset: int, data: memoryview) -> None:
        data[:] = bytes(len(data))

    def write(self, offset: int, data: bytes | memoryview) -> None:
        if offset != 0 or len(data) != 1 or data[0] != BOOT_COMPLETE:  # as Firecracker: one byte at 0
            return
        now = self._clock()
        with self._lock:
            self.boot_times.append(Timestamp(now.wall_us - self.start.wall_us, now.cpu_us - self.start.cpu_us))
        self._report(boot_time_line(self.start, now))
