"""The VMM's log: Firecracker-style lines to a file or named pipe, with level filtering.

A line looks like Firecracker's::

    2026-01-01T12:00:00.123456789 [my-vm:main:INFO:firelet/cli/vmm.py:88] Running firelet v0.1.0

where the level appears only with ``show_level`` and the origin only with
``show_log_origin``. Lines that cannot be written (a full pipe with a slow
reader) are dropped and counted in ``LOG_LOSSES`` (every VM's ``logger.missed_log_count``); the
VMM never blocks on its log.
"""

from __future__ import annotations

import logging
import os
import time

from firelet.metrics import LOG_LOSSES, open_sink, write_line

#: Firecracker's ``Trace`` level sits below Python's DEBUG.
TRACE = 5
_LEVELS = {"Error": logging.ERROR, "Warning": logging.WARNING, "Info": logging.INFO,
           "Debug": logging.DEBUG, "Trace": TRACE, "Off": logging.CRITICAL + 10}
_NAMES = {logging.ERROR: "ERROR", logging.WARNING: "WARN", logging.INFO: "INFO",
          logging.DEBUG: "DEBUG", TRACE: "TRACE", logging.CRITICAL: "ERROR"}


def python_level(level: str) -> int:
    """The ``logging`` level for a (normalised) Firecracker level name."""
    return _LEVELS[level]


class FirecrackerLogHandler(logging.Handler):
    """A ``logging`` handler writing Firecracker-format lines to a file or FIFO without blocking."""

    def __init__(self, path: str, instance_id: str, *, level: str = "Info",
                 show_level: bool = False, show_log_origin: bool = False, module: str | None = None) -> None:
        super().__init__(python_level(level))
        self.path = path
        self.instance_id = instance_id
        self.show_level = show_level
        self.show_log_origin = show_log_origin
        self.module = module
        self._fd = open_sink(path)

    def format_line(self, record: logging.LogRecord) -> str:
        secs = int(record.created)
        nanos = int((record.created - secs) * 1e9)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{nanos:09d}"
        tags = [self.instance_id, record.threadName or "main"]
        if self.show_level:
            tags.append(_NAMES.get(record.levelno, record.levelname))
        if self.show_log_origin:
            tags += [record.pathname, str(record.lineno)]
        message = record.getMessage().replace("\n", " ")
        return f"{stamp} [{':'.join(tags)}] {message}\n"

    def emit(self, record: logging.LogRecord) -> None:
        if self.module and not record.name.startswith(self.module):
            return
        try:
            line = self.format_line(record).encode("utf-8", "replace")
        except Exception:  # a bad format string in a log call must not kill the caller
            LOG_LOSSES.missed_log_count += 1
            return
        if not write_line(self._fd, line):
            LOG_LOSSES.missed_log_count += 1

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        super().close()


def install(handler: FirecrackerLogHandler) -> None:
    """Route the ``firelet`` logger to ``handler`` (replacing a previous one of ours)."""
    logger = logging.getLogger("firelet")
    for old in [h for h in logger.handlers if isinstance(h, FirecrackerLogHandler)]:
        logger.removeHandler(old)
        old.close()
    logger.addHandler(handler)
    logger.setLevel(min(handler.level, logger.level or handler.level))
