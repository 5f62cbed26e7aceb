"""Where a UART's transmitted bytes go: a sink, written a line at a time.

A console line costs one write, not one per byte: a newline or a full batch
goes out at once, anything else (a prompt) as soon as the event loop runs the
deferred flush. A closed or broken sink never takes the guest down: its bytes
are counted as dropped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from firelet.log import get_logger

log = get_logger(__name__)

#: Batched output is written once it reaches this many bytes, even without a newline.
BATCH_BYTES = 256


class Sink(Protocol):
    """Where a UART's bytes go: a terminal, a file, a :class:`~firelet.devices.legacy.console.ConsoleBuffer`."""

    def write(self, data: bytes, /) -> object: ...

    def flush(self) -> object: ...


class LineOutput:
    """Thread-safe; ``defer(fn)`` runs ``fn`` soon on another thread (without it, no batching)."""

    def __init__(self, sink: Sink | None, defer: Callable[[Callable[[], None]], None] | None = None) -> None:
        self.sink = sink
        self._defer = defer
        self._pending = bytearray()
        self._lock = threading.Lock()
        self._flush_scheduled = False
        self.sent = 0
        self.dropped = 0

    def emit(self, data: bytes | bytearray) -> None:
        self.sent += len(data)
        if self.sink is None:
            return
        if self._defer is None:
            self._write(bytes(data))
            return
        with self._lock:
            self._pending += data
            now = 0x0A in data or len(self._pending) >= BATCH_BYTES
            schedule = not now and not self._flush_scheduled
            if schedule:
                self._flush_scheduled = True
        if now:
            self.flush()
        elif schedule:
            self._defer(self.flush)

    def flush(self) -> None:
        """Write out what is batched."""
        with self._lock:
            data, self._pending = bytes(self._pending), bytearray()
            self._flush_scheduled = False
        if data:
            self._write(data)

    def _write(self, data: bytes) -> None:
        sink = self.sink
        if sink is None:
            return
        try:
            sink.write(data)
            sink.flush()  # a console must never hold back a prompt
        except (OSError, ValueError) as exc:
            self.dropped += len(data)
            if self.dropped == len(data):
                log.warning("serial output dropped: %s", exc)
