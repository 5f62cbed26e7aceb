"""The VMM's one event-loop thread: every device event is served here.

Devices never poll. Each registers the file descriptors it waits on (queue
ioeventfds, a TAP fd, the console's stdin, timers) with a callback; the loop
sleeps in ``epoll_wait`` until one is ready. Other threads (the API server, the
vCPUs) hand work to the loop with :meth:`EventLoop.call_soon`, so device state
is only ever touched from one thread and needs no locks of its own.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable

from firelet.log import get_logger

log = get_logger(__name__)

Callback = Callable[[], None]


class EventLoop:
    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._handlers: dict[int, Callback] = {}
        self._calls: deque[Callback] = deque()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._wake_fd, select.EPOLLIN)
        self._stopping = False
        self.thread: threading.Thread | None = None
        #: Set when a callback raised: the VM must stop, the loop is no longer trustworthy.
        self.failure: BaseException | None = None
        self.on_failure: Callable[[BaseException], None] | None = None
        self._periodic: list[list] = []  # [interval_s, next_due, callback]

    def add_reader(self, fd: int, callback: Callback) -> None:
        """Call ``callback()`` whenever ``fd`` is readable (level-triggered)."""
        self._handlers[fd] = callback
        self._epoll.register(fd, select.EPOLLIN)

    def add_eventfd(self, fd: int, callback: Callback) -> None:
        """Call ``callback()`` each time eventfd ``fd`` is signalled (its counter is drained first)."""

        def drain_then_call() -> None:
            try:
                os.eventfd_read(fd)
            except BlockingIOError:
                return
            callback()

        self.add_reader(fd, drain_then_call)

    def remove(self, fd: int) -> None:
        if self._handlers.pop(fd, None) is not None:
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass

    def every(self, interval_s: float, callback: Callback) -> None:
        """Call ``callback()`` on the loop thread every ``interval_s`` seconds (register before start)."""
        self._periodic.append([interval_s, time.monotonic() + interval_s, callback])

    def _timeout(self) -> float:
        if not self._periodic:
            return -1
        return max(0.0, min(p[1] for p in self._periodic) - time.monotonic())

    def _run_periodic(self) -> None:
        now = time.monotonic()
        for entry in self._periodic:
            if entry[1] <= now:
                entry[1] = now + entry[0]
                self._dispatch(entry[2])

    def call_soon(self, callback: Callback) -> None:
        """Run ``callback`` on the loop thread (thread-safe)."""
        self._calls.append(callback)
        os.eventfd_write(self._wake_fd, 1)

    def stop(self) -> None:
        """Ask the loop to return after the current iteration (thread-safe)."""
        self._stopping = True
        os.eventfd_write(self._wake_fd, 1)

    def start(self, name: str = "fl-events") -> threading.Thread:
        self.thread = threading.Thread(target=self.run, name=name, daemon=True)
        self.thread.start()
        return self.thread

    def run(self) -> None:
        while not self._stopping:
            try:
                ready = self._epoll.poll(self._timeout())
            except InterruptedError:
                continue
            if self._periodic:
                self._run_periodic()
            for fd, _events in ready:
                if fd == self._wake_fd:
                    try:
                        os.eventfd_read(self._wake_fd)
                    except BlockingIOError:
                        pass
                    self._run_calls()
                    continue
                handler = self._handlers.get(fd)
                if handler is not None:
                    self._dispatch(handler)
                if self._stopping:
                    break
        self._run_calls()

    def _run_calls(self) -> None:
        while self._calls:
            self._dispatch(self._calls.popleft())

    def _dispatch(self, callback: Callback) -> None:
        try:
            callback()
        except Exception as exc:  # a VMM bug: stop the VM rather than run on in a bad state
            log.debug("event handler failed", exc_info=True)  # the trace is for developers
            if self.failure is None:
                self.failure = exc
                if self.on_failure is not None:
                    self.on_failure(exc)

    def close(self) -> None:
        self._epoll.close()
        os.close(self._wake_fd)
