"""Metrics counters and lines, and the Firecracker-style log, on real files and FIFOs."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pytest

from firelet import logs
from firelet.metrics import Metrics, MetricsWriter


def test_counters_are_plain_attributes_and_lines_carry_deltas(tmp_path: Path) -> None:
    m = Metrics()
    m.block.read_bytes += 4096
    m.vcpu.add("exit_hlt")
    m.put_api_requests.add("drive_count", 2)
    first = m.deltas()
    assert first["block"]["read_bytes"] == 4096 and first["vcpu"]["exit_hlt"] == 1
    assert first["put_api_requests"] == {"drive_count": 2}
    assert m.net.never_touched == 0
    m.block.read_bytes += 100
    second = m.deltas()
    assert second["block"]["read_bytes"] == 100 and second["vcpu"]["exit_hlt"] == 0
    assert set(second) >= {"utc_timestamp_ms", "api_server", "get_api_requests", "put_api_requests",
                           "patch_api_requests", "vcpu", "block", "net", "rate_limiter", "uart", "logger"}


def test_writer_appends_json_lines_to_a_file(tmp_path: Path) -> None:
    m = Metrics()
    path = tmp_path / "metrics.json"
    writer = MetricsWriter(str(path), m, interval_s=3600)
    m.uart.write_count += 3
    assert writer.flush()
    writer.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 2 and lines[0]["uart"]["write_count"] == 3 and lines[1]["uart"]["write_count"] == 0


def test_writer_flushes_periodically(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    writer = MetricsWriter(str(path), Metrics(), interval_s=0.05)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(path.read_text().splitlines()) < 2:
            time.sleep(0.01)
        assert len(path.read_text().splitlines()) >= 2
    finally:
        writer.close()


def test_fifo_without_reader_never_blocks_and_counts_lost_lines(tmp_path: Path) -> None:
    fifo = tmp_path / "metrics.fifo"
    os.mkfifo(fifo)
    m = Metrics()
    writer = MetricsWriter(str(fifo), m, interval_s=3600)
    try:
        results = [writer.flush() for _ in range(200)]  # a pipe holds 64 KiB; lines are ~1 KiB
        assert results[0] is True and results[-1] is False
        assert m.logger.missed_metrics_count == results.count(False)
        # A reader drains the pipe: lines flow again, each one whole JSON.
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        try:
            data = os.read(fd, 1 << 20)
            assert writer.flush()
        finally:
            os.close(fd)
        assert all(json.loads(line) for line in data.splitlines())
    finally:
        writer.close()


@pytest.fixture
def logger() -> logging.Logger:
    log = logging.getLogger("firelet.test_logs")
    yield log
    for handler in [h for h in logging.getLogger("firelet").handlers if isinstance(h, logs.FirecrackerLogHandler)]:
        logging.getLogger("firelet").removeHandler(handler)
        handler.close()


def test_log_lines_look_like_firecrackers_and_filter_by_level(tmp_path: Path, logger: logging.Logger) -> None:
    path = tmp_path / "fc.log"
    logs.install(logs.FirecrackerLogHandler(str(path), "vm-1", level="Warning", show_level=True, show_log_origin=True))
    logger.info("not shown")
    logger.warning("disk %s is slow", "rootfs")
    line = path.read_text()
    assert "not shown" not in line
    stamp, tags, message = line.split(" ", 2)
    assert len(stamp) == len("2026-01-01T12:00:00.123456789") and stamp[10] == "T"
    assert tags.startswith("[vm-1:MainThread:WARN:") and tags.endswith("]")
    assert tags.split(":")[3].endswith("test_api_metrics_logs.py") and tags.split(":")[4].rstrip("]").isdigit()
    assert message == "disk rootfs is slow\n"


def test_log_plain_tags_and_module_filter(tmp_path: Path, logger: logging.Logger) -> None:
    path = tmp_path / "fc.log"
    logs.install(logs.FirecrackerLogHandler(str(path), "vm-2", level="Trace", module="firelet.test_logs"))
    logger.log(logs.TRACE, "multi\nline")
    logging.getLogger("firelet.other").warning("filtered out by module")
    text = path.read_text()
    assert text.count("\n") == 1 and "[vm-2:MainThread] multi line" in text


def test_log_to_fifo_without_reader_counts_lost_lines(tmp_path: Path, logger: logging.Logger) -> None:
    from firelet.metrics import LOG_LOSSES

    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    logs.install(logs.FirecrackerLogHandler(str(fifo), "vm-3", level="Info"))
    vm_a, vm_b = Metrics(), Metrics()
    vm_a.deltas()
    before = LOG_LOSSES.missed_log_count
    for _ in range(2000):
        logger.info("x" * 100)
    lost = LOG_LOSSES.missed_log_count - before
    assert lost > 0
    # The log is the process's: every VM's metrics report its losses, each since its own last line.
    assert vm_a.deltas()["logger"]["missed_log_count"] == lost
    assert vm_b.logger.missed_log_count == LOG_LOSSES.missed_log_count
