"""A second process that reads shared memory while the test writes it, as a vCPU does.

A Python thread cannot see what happens inside one C call (it waits for the GIL), but
a forked process on another core can: it polls ``read()`` while the parent calls
``write()`` over and over, and reports every pair of successive values ``ok`` refused.
The memory must be shared across fork (a memfd or a ``MAP_SHARED`` mapping).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

#: Refusals reported at most (the first ones are enough to see what was torn).
MAX_BAD = 5


def watch_while_writing(
    read: Callable[[], int], ok: Callable[[int, int], bool], write: Callable[[], None], seconds: float
) -> tuple[int, list[tuple[int, int]]]:
    """Poll ``read()`` in a child for ``seconds`` while calling ``write()``; return (reads, refused pairs)."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the reader: no pytest, no exceptions out of here
        status = 1
        try:
            os.close(rfd)
            reads, bad = 0, []
            prev = read()
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                for _ in range(1000):
                    value = read()
                    if not ok(prev, value) and len(bad) < MAX_BAD:
                        bad.append((prev, value))
                    prev = value
                reads += 1000
            os.write(wfd, json.dumps([reads, bad]).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(wfd)
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for _ in range(100):
                write()
    finally:
        with os.fdopen(rfd, "rb") as pipe:
            report = pipe.read()
        os.waitpid(pid, 0)
    assert report, "the reading process died"
    reads, bad = json.loads(report)
    return reads, [(a, b) for a, b in bad]
