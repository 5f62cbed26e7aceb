"""Counters every part of a VM bumps, written as Firecracker-style JSON lines.

Each VM owns one :class:`Metrics` (made by whoever makes the VM, and handed to
what counts: the vCPUs' exit counters, the API's request counters; devices keep
their own counters, folded in by a *source* the builder registers). So a process
hosting several VMs keeps their counters apart, and ``firelet-vmm`` writes its
one VM's.

Hot paths (vCPU exits, the API) increment plain attributes:
``metrics.vcpu.exit_io_out += 1``. No locks: each counter has one writer thread
in practice, and a flush reads the current values without resetting them,
emitting the difference from the previous flush (Firecracker's
``SharedIncMetric`` semantics), so no increment is ever lost to a reset race.

The top-level keys follow Firecracker's metrics (``api_server``,
``get_api_requests``, ``put_api_requests``, ``patch_api_requests``, ``block``,
``net``, ``vcpu``, ``uart``, ``logger``) where they mean the same thing.

One thing is per process, not per VM: the log (Python's ``logging``). Lines it
loses are counted once, in :data:`LOG_LOSSES`, and every VM's
``logger.missed_log_count`` reports that count.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable
from typing import Any

from firelet import seccomp, threads

#: Firecracker writes metrics every 60 s (docs/metrics.md).
FLUSH_INTERVAL_S = 60.0


class Area:
    """A named group of integer counters; reading one that was never set gives 0."""

    def __init__(self, **declared: int) -> None:
        self.__dict__.update(declared)

    def __getattr__(self, name: str) -> int:
        if name.startswith("__"):
            raise AttributeError(name)
        return 0

    def __setattr__(self, name: str, value: int) -> None:  # any counter name may be set
        self.__dict__[name] = value

    def add(self, name: str, amount: int = 1) -> None:
        """Increment a counter whose name is computed (e.g. a vCPU exit reason or an endpoint)."""
        self.__dict__[name] = self.__dict__.get(name, 0) + amount

    def snapshot(self) -> dict[str, int]:
        return dict(self.__dict__)


class _LoggerArea(Area):
    """The ``logger`` group: the VM's own metrics-writing counters, and the process log's losses."""

    def __getattr__(self, name: str) -> int:
        if name == "missed_log_count":
            return LOG_LOSSES.missed_log_count
        return super().__getattr__(name)

    def snapshot(self) -> dict[str, int]:
        own = {key: value for key, value in self.__dict__.items() if key != "missed_log_count"}
        return {"missed_log_count": LOG_LOSSES.missed_log_count, **own}


#: Lines the process's log could not write (firelet.logs counts them here; the log is per process).
LOG_LOSSES = Area(missed_log_count=0)


class Metrics:
    """One VM's counters: one :class:`Area` per part of the VMM."""

    def __init__(self) -> None:
        self.api_server = Area(process_startup_time_us=0, process_startup_time_cpu_us=0)
        self.get_api_requests = Area()
        self.put_api_requests = Area()
        self.patch_api_requests = Area()
        self.vcpu = Area(exit_io_in=0, exit_io_out=0, exit_mmio_read=0, exit_mmio_write=0, failures=0)
        self.block = Area(read_bytes=0, write_bytes=0, read_count=0, write_count=0, flush_count=0,
                          rate_limiter_throttled_events=0, invalid_reqs_count=0)
        self.net = Area(rx_bytes_count=0, tx_bytes_count=0, rx_packets_count=0, tx_packets_count=0,
                        rx_rate_limiter_throttled=0, tx_rate_limiter_throttled=0)
        self.rate_limiter = Area(throttled_events=0)
        self.uart = Area(read_count=0, write_count=0, missed_write_count=0)
        self.logger = _LoggerArea(missed_metrics_count=0, metrics_fails=0)
        self._areas = {name: area for name, area in vars(self).items() if isinstance(area, Area)}
        self._last: dict[str, dict[str, int]] = {}
        self._sources: list[Callable[[], None]] = []

    def area(self, name: str) -> Area:
        """The group ``name``, made empty on first use: per-device groups such as ``net_eth0``
        (Firecracker writes one per device beside the summed group)."""
        area = self._areas.get(name)
        if area is None:
            area = self._areas[name] = Area()
        return area

    def add_source(self, collect: Callable[[], None]) -> None:
        """Run ``collect()`` before each reading: it copies counters kept elsewhere (a device's) in."""
        self._sources.append(collect)

    def collect(self) -> None:
        """Bring in the counters the sources keep (cumulative values: collecting twice is harmless)."""
        for source in self._sources:
            source()

    def totals(self) -> dict[str, dict[str, int]]:
        """Every counter's value now, by group (not deltas: for a library user's look at a VM)."""
        self.collect()
        return {name: area.snapshot() for name, area in self._areas.items()}

    def deltas(self) -> dict[str, Any]:
        """Every counter's change since the previous call, shaped as one metrics line."""
        self.collect()
        line: dict[str, Any] = {"utc_timestamp_ms": int(time.time() * 1000)}
        for name, area in self._areas.items():
            now = area.snapshot()
            before = self._last.get(name, {})
            line[name] = {key: value - before.get(key, 0) for key, value in now.items()}
            self._last[name] = now
        return line


#: Counters that belong to no VM: only the API's default until it is handed its VM's
#: registry (firelet-vmm hands it one); a VM never counts here.
METRICS = Metrics()


def open_sink(path: str) -> int:
    """Open a metrics or log destination: append to a file, or write to a FIFO without blocking.

    A FIFO is opened read-write (Linux fifo(7)) so the open succeeds with no
    reader yet, and non-blocking so a stalled reader costs lost lines, never a
    stalled VMM.
    """
    try:
        is_fifo = stat.S_ISFIFO(os.stat(path).st_mode)
    except FileNotFoundError:
        is_fifo = False
    if is_fifo:
        return os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)


def write_line(fd: int, line: bytes) -> bool:
    """Write one whole line, or nothing useful: False when it could not all go out."""
    try:
        return os.write(fd, line) == len(line)
    except OSError:
        return False


class MetricsWriter:
    """Writes one VM's :class:`Metrics` deltas to a file or FIFO every minute and on demand."""

    def __init__(self, path: str, metrics: Metrics, *, interval_s: float = FLUSH_INTERVAL_S) -> None:
        self.path = path
        self._metrics = metrics
        self._fd = open_sink(path)
        self._interval = interval_s
        self._lock = threading.Lock()  # the periodic thread and FlushMetrics may race
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=threads.METRICS, daemon=True)
        self._thread.start()

    def flush(self) -> bool:
        """Write one line now; a line that cannot be written is counted as missed."""
        with self._lock:
            if self._fd < 0:
                return False
            import json  # here, not at the top: the VMM imports this module at every start

            line = json.dumps(self._metrics.deltas(), separators=(",", ":")).encode() + b"\n"
            ok = write_line(self._fd, line)
        if not ok:
            self._metrics.logger.missed_metrics_count += 1
        return ok

    def _run(self) -> None:
        seccomp.confine("metrics")
        while not self._stop.wait(self._interval):
            self.flush()

    def close(self) -> None:
        """Write a last line and stop."""
        self._stop.set()
        if self._thread is not threading.current_thread():  # no thread left to wake during shutdown
            self._thread.join(timeout=5)
        self.flush()
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
