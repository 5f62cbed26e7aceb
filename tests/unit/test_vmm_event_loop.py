"""The VMM's event loop: eventfds, calls from other threads, periodic work, failures."""

from __future__ import annotations

import os
import threading
import time

from firelet.events.loop import EventLoop


def test_eventfd_callbacks_calls_and_periodic_work_run_on_the_loop_thread() -> None:
    loop = EventLoop()
    seen: list[str] = []
    ticks: list[float] = []
    fd = os.eventfd(0, os.EFD_NONBLOCK)
    loop.add_eventfd(fd, lambda: seen.append(threading.current_thread().name))
    loop.every(0.05, lambda: ticks.append(time.monotonic()))
    thread = loop.start("test-loop")
    os.eventfd_write(fd, 1)
    done = threading.Event()
    loop.call_soon(done.set)
    assert done.wait(5)
    time.sleep(0.3)
    loop.stop()
    thread.join(5)
    assert seen == ["test-loop"]
    assert 3 <= len(ticks) <= 10
    os.close(fd)
    loop.close()


def test_a_failing_callback_is_reported_once_and_the_loop_survives() -> None:
    loop = EventLoop()
    failures: list[BaseException] = []
    loop.on_failure = failures.append
    loop.start()
    loop.call_soon(lambda: 1 / 0)
    ok = threading.Event()
    loop.call_soon(ok.set)
    assert ok.wait(5)
    loop.stop()
    loop.thread.join(5)
    assert len(failures) == 1 and isinstance(failures[0], ZeroDivisionError)
    loop.close()
