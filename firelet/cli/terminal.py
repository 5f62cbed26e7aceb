"""Put the controlling terminal in raw mode for an interactive guest console, and always restore it."""

from __future__ import annotations

import contextlib
import sys
import termios
import tty
from collections.abc import Iterator


@contextlib.contextmanager
def raw_terminal(enabled: bool) -> Iterator[None]:
    """Raw mode on stdin while the block runs (keys such as Ctrl-C go to the guest)."""
    if not enabled or not sys.stdin.isatty():
        yield
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
