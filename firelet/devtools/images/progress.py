"""A progress line for long builds, fit for a terminal or a CI log.

Builders call a progress callable with milestones ("extracting source") and,
while something slow runs, with ticks ("compiling: 812 objects, 2m10s").
A plain callable (``print``) gets milestones and a tick every 15 s; a
:class:`LiveLine` on a terminal redraws one line every second instead.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

# How often a builder ticks a plain callable: often enough to show life in a
# CI log, rarely enough not to flood it.
DEFAULT_TICK_SECONDS = 15.0


class LiveLine:
    """Milestones on their own lines; ticks redraw one line on a TTY."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.is_tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.tick_seconds = 1.0 if self.is_tty else DEFAULT_TICK_SECONDS
        self._open = False  # a tick is on screen without its newline

    def __call__(self, message: str) -> None:
        self._end_tick()
        print(message, file=self.stream, flush=True)

    def tick(self, message: str) -> None:
        if self.is_tty:
            self.stream.write("\r\x1b[K" + message)
            self.stream.flush()
            self._open = True
        else:
            print(message, file=self.stream, flush=True)

    def _end_tick(self) -> None:
        if self._open:
            self.stream.write("\n")
            self._open = False


def ticker(progress: Callable[[str], object] | None) -> tuple[float, Callable[[str], object] | None]:
    """How often to tick ``progress`` and the callable that takes ticks."""
    if progress is None:
        return DEFAULT_TICK_SECONDS, None
    return float(getattr(progress, "tick_seconds", DEFAULT_TICK_SECONDS)), getattr(progress, "tick", progress)


def elapsed(since: float) -> str:
    """``1m05s`` style elapsed time since a ``time.monotonic()`` reading."""
    seconds = int(time.monotonic() - since)
    return f"{seconds // 60}m{seconds % 60:02d}s"
