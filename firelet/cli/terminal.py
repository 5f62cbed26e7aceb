"""Put the controlling terminal in raw mode for an interactive guest console, and always restore it."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


def is_interactive() -> bool:
    """A person at a terminal: stdin and stdout are a tty and we are its foreground job.

    A background job (``cmd &``, or under ``timeout``) must not touch the terminal:
    changing its mode would stop the process with SIGTTOU, reading it with SIGTTIN.
    """
    try:
        return (sys.stdin.isatty() and sys.stdout.isatty()
                and os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp())
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def raw_terminal(enabled: bool) -> Iterator[None]:
    """Raw mode on stdin while the block runs (keys such as Ctrl-C go to the guest)."""
    if not enabled or not is_interactive():
        yield
        return
    import termios  # only for a person at a terminal: the VMM's start skips them otherwise
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
