"""Where the guest's serial console goes, and how a program reads it back.

The UART writes guest output to a *sink* (:class:`~firelet.devices.legacy.output.Sink`:
anything with ``write(bytes)`` and ``flush()``). :class:`ConsoleBuffer` keeps what the guest printed so that a
program (a test, the benchmark, the README's example) can wait for a line and
read the output, optionally teeing it to a terminal or file as it comes.
"""

from __future__ import annotations

import os
import re
import threading
import time
from typing import BinaryIO

from firelet.devices.legacy.output import Sink

#: Guest output kept in memory at most; older bytes are dropped (a runaway guest cannot eat host RAM).
MAX_BUFFER_BYTES = 8 << 20


class FdSink:
    """Unbuffered writes to a file descriptor (a terminal, a pipe, a file)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.fd, view)
            except BlockingIOError:
                time.sleep(0.001)
                continue
            except OSError:  # reader went away: drop guest output rather than stop the guest
                return len(data)
            view = view[written:]
        return len(data)

    def flush(self) -> None:
        pass


class NullSink:
    def write(self, data: bytes) -> int:
        return len(data)

    def flush(self) -> None:
        pass


class ConsoleBuffer:
    """Collects guest console output; thread-safe; can tee to another sink."""

    def __init__(self, tee: Sink | BinaryIO | None = None, limit: int = MAX_BUFFER_BYTES) -> None:
        self._data = bytearray()
        self._dropped = 0
        self._limit = limit
        self._cond = threading.Condition()
        self._tee = tee

    def write(self, data: bytes) -> int:
        with self._cond:
            self._data += data
            excess = len(self._data) - self._limit
            if excess > 0:
                del self._data[:excess]
                self._dropped += excess
            self._cond.notify_all()
        if self._tee is not None:
            self._tee.write(data)
        return len(data)

    def flush(self) -> None:
        if self._tee is not None:
            self._tee.flush()

    def bytes(self) -> bytes:
        with self._cond:
            return bytes(self._data)

    def text(self) -> str:
        """Everything kept so far, decoded leniently, with the tty's ``\\r\\n`` turned into ``\\n``."""
        return self.bytes().decode("utf-8", "replace").replace("\r\n", "\n")

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float) -> re.Match[str] | None:
        """Wait until the output matches ``pattern`` (a regex); None on timeout."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                text = bytes(self._data).decode("utf-8", "replace").replace("\r\n", "\n")
                match = regex.search(text)
                if match:
                    return match
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(min(remaining, 0.5))
