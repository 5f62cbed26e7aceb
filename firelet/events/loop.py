"""The VMM's event loop: one thread (``fc_vmm``) that waits in ``epoll_wait`` and serves devices.

What runs here: callbacks for file descriptors (queue ioeventfds, the console's
stdin, later TAP and vsock sockets), with any epoll event mask; one-shot timers
(:meth:`EventLoop.call_later`) and periodic work (:meth:`EventLoop.every`), kept
in a heap whose earliest deadline is ``epoll_wait``'s timeout; and calls handed
over by other threads (:meth:`EventLoop.call_soon_threadsafe`, or
:meth:`EventLoop.submit` when the caller needs the result).

What is true of the VMM around it: the API's operations run here, one at a
time, so the VMM needs no locks for the API. But device registers are also
accessed by vCPU threads (an MMIO or port exit is served on the vCPU's own
thread), so a device whose state both sides touch keeps its own lock (the
virtio-mmio transport, the UART). And the loop is not purely event-driven:
devices register periodic work with :meth:`every` (the UART and virtio-mmio
re-raise an interrupt edge the guest may have lost, every 0.25 s, and the UART
flushes output KVM batched for it).

Fds, timers and periodic work are set up from the loop's thread, or from any
thread before the loop runs; other threads hand such work over with
:meth:`call_soon_threadsafe`. A callback that raises is a VMM bug: it is
recorded in :attr:`EventLoop.failure` and reported once through ``on_failure``
(the VM then stops), and the loop goes on serving the rest.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from firelet import threads
from firelet.events.timers import TimerHandle, TimerHeap
from firelet.log import get_logger

log = get_logger(__name__)

T = TypeVar("T")
Callback = Callable[[], None]
#: An fd subscriber: called with the epoll event mask that made the fd ready.
FdCallback = Callable[[int], None]

EPOLLIN, EPOLLOUT, EPOLLET = select.EPOLLIN, select.EPOLLOUT, select.EPOLLET


class LoopStopped(RuntimeError):
    """A call was handed to an event loop that has already ended."""


class Periodic:
    """Work :meth:`EventLoop.every` repeats; :meth:`cancel` stops it (from the loop's thread)."""

    __slots__ = ("interval_s", "callback", "cancelled", "_loop", "_timer")

    def __init__(self, loop: EventLoop, interval_s: float, callback: Callback) -> None:
        self.interval_s, self.callback, self._loop = interval_s, callback, loop
        self.cancelled = False
        self._timer = loop.call_later(interval_s, self._fire)

    def _fire(self) -> None:
        self._timer = self._loop.call_later(self.interval_s, self._fire)  # before: a failing run repeats too
        self.callback()

    def cancel(self) -> None:
        self.cancelled = True
        self._timer.cancel()


class EventLoop:
    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._handlers: dict[int, FdCallback] = {}
        self._calls: deque[Callback] = deque()
        self._timers = TimerHeap()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._wake_fd, EPOLLIN)
        self._lock = threading.Lock()  # orders other threads' hand-overs with the loop's end
        self._stopping = False
        self._ended = False
        self._owner: int | None = None  # the loop thread's ident while it runs
        self.thread: threading.Thread | None = None
        #: Set when a callback raised: the VM must stop, the loop is no longer trustworthy.
        self.failure: BaseException | None = None
        self.on_failure: Callable[[BaseException], None] | None = None

    # -- file descriptors -----------------------------------------------------
    def add(self, fd: int, events: int, callback: FdCallback) -> None:
        """Call ``callback(mask)`` whenever ``fd`` has any of ``events`` (EPOLLIN, EPOLLOUT, EPOLLET, ...)."""
        self._check_thread("add")
        self._epoll.register(fd, events)
        self._handlers[fd] = callback

    def modify(self, fd: int, events: int, callback: FdCallback | None = None) -> None:
        """Change what ``fd`` is watched for (e.g. add EPOLLOUT while output waits), and its callback."""
        self._check_thread("modify")
        self._epoll.modify(fd, events)
        if callback is not None:
            self._handlers[fd] = callback

    def remove(self, fd: int) -> None:
        """Stop watching ``fd`` (before closing it). Harmless for an fd not watched.

        An event for ``fd`` already taken from the kernel in this round is dropped. Once
        the loop has ended nothing waits on the epoll again, so it is left alone: closing
        ``fd`` drops it, and the thread releasing the VM may make no epoll_ctl (seccomp).
        """
        self._check_thread("remove")
        if self._handlers.pop(fd, None) is not None and not self._ended:
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass

    def add_reader(self, fd: int, callback: Callback) -> None:
        """Call ``callback()`` whenever ``fd`` is readable (level-triggered)."""
        self.add(fd, EPOLLIN, lambda _mask: callback())

    def add_eventfd(self, fd: int, callback: Callback) -> None:
        """Call ``callback()`` each time eventfd ``fd`` is signalled (its counter is drained first)."""

        def drain_then_call(_mask: int) -> None:
            try:
                os.eventfd_read(fd)
            except BlockingIOError:
                return
            callback()

        self.add(fd, EPOLLIN, drain_then_call)

    # -- timers ---------------------------------------------------------------
    def call_later(self, delay_s: float, callback: Callback) -> TimerHandle:
        """Call ``callback()`` once, ``delay_s`` seconds from now; the handle can cancel it."""
        self._check_thread("call_later")
        return self._timers.add(time.monotonic() + max(0.0, delay_s), callback)

    def every(self, interval_s: float, callback: Callback) -> Periodic:
        """Call ``callback()`` every ``interval_s`` seconds, the first time one interval from now."""
        if interval_s <= 0:
            raise ValueError(f"every(): the interval must be positive, got {interval_s}")
        return Periodic(self, interval_s, callback)

    # -- calls from this and other threads -----------------------------------
    def call_soon(self, callback: Callback) -> None:
        """Run ``callback()`` on the loop thread, after the work already queued.

        From the loop's thread this only queues it; from another thread it is
        :meth:`call_soon_threadsafe`.
        """
        if self._owner is not None and threading.get_ident() == self._owner:
            self._calls.append(callback)
        else:
            self.call_soon_threadsafe(callback)

    def call_soon_threadsafe(self, callback: Callback) -> bool:
        """Run ``callback()`` on the loop thread, from any thread; wakes the loop.

        Returns False (and drops the call) once the loop has ended: the VM is over.
        """
        with self._lock:
            if self._ended:
                return False
            self._calls.append(callback)
            os.eventfd_write(self._wake_fd, 1)  # under the lock: close() cannot free the fd meanwhile
        return True

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn()`` on the loop thread, from any thread; the future holds its result or exception.

        What ``fn`` raises goes to the caller through the future, not to ``on_failure``.
        """
        future: Future[T] = Future()

        def call() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn())
            except BaseException as exc:  # the caller's to handle, on its own thread
                future.set_exception(exc)

        if not self.call_soon_threadsafe(call):
            future.set_exception(LoopStopped("the VMM's event loop has stopped"))
        return future

    # -- running --------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to return after the current round (thread-safe)."""
        self._stopping = True
        with self._lock:
            if not self._ended:
                os.eventfd_write(self._wake_fd, 1)

    def start(self, name: str = threads.VMM) -> threading.Thread:
        self.thread = threading.Thread(target=self.run, name=name, daemon=True)
        self.thread.start()
        return self.thread

    def run(self) -> None:
        """Serve events until :meth:`stop`; then run the calls still queued, and end."""
        self._owner = threading.get_ident()
        try:
            while not self._stopping:
                self._round()
        finally:
            with self._lock:
                self._ended = True
            while self._calls:  # nothing more can arrive from other threads
                self._dispatch(self._calls.popleft())
            self._owner = None

    def _round(self) -> None:
        self._run_calls()  # what callbacks queued for "soon" goes before sleeping
        deadline = self._timers.next_deadline()
        if self._calls or self._stopping:
            timeout = 0.0
        elif deadline is None:
            timeout = -1.0
        else:
            timeout = max(0.0, deadline - time.monotonic())
        try:
            ready = self._epoll.poll(timeout)
        except InterruptedError:
            return
        for fd, mask in ready:
            if fd == self._wake_fd:
                try:
                    os.eventfd_read(self._wake_fd)
                except BlockingIOError:
                    pass
                self._run_calls()
            else:
                handler = self._handlers.get(fd)
                if handler is not None:
                    self._dispatch(handler, mask)
            if self._stopping:
                return
        if deadline is not None:
            self._run_timers(time.monotonic())

    def _run_timers(self, now: float) -> None:
        """Fire every timer due at ``now``, earliest first (ones set meanwhile wait for the next round)."""
        while not self._stopping:
            handle = self._timers.pop_due(now)
            if handle is None:
                return
            self._dispatch(handle.callback)

    def _run_calls(self) -> None:
        for _ in range(len(self._calls)):  # the ones queued meanwhile wait for the next round
            self._dispatch(self._calls.popleft())

    def _dispatch(self, callback: Callable[..., None], *args: Any) -> None:
        try:
            callback(*args)
        except Exception as exc:  # a VMM bug: stop the VM rather than run on in a bad state
            log.debug("event handler failed", exc_info=True)  # the trace is for developers
            if self.failure is None:
                self.failure = exc
                if self.on_failure is not None:
                    self.on_failure(exc)

    def _check_thread(self, what: str) -> None:
        owner = self._owner
        if owner is not None and threading.get_ident() != owner:
            raise RuntimeError(f"EventLoop.{what}() from another thread: hand it over with call_soon_threadsafe()")

    def close(self) -> None:
        """Release the epoll and wake fds (after the loop has ended, or if it never ran)."""
        with self._lock:
            self._ended = True
        self._epoll.close()
        os.close(self._wake_fd)
