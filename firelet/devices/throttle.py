"""A device queue held to its rate limiter: refuse while throttled, wake on one timer.

A device asks :meth:`Throttle.admit` before it serves each request. On a refusal the
queue is *blocked*: the device leaves the request where it was (un-popped) and takes
nothing more, and one one-shot timer is armed on the event loop for the moment the
limiter says the request will fit. When it fires, the throttle calls the device's
``resume`` callback, which serves the queue again. Nothing polls.

Timers are set and cancelled only on the loop's thread (:class:`Timers`' rule), so
arming goes through ``call_soon``: the device may be asked to serve from a vCPU thread
(a QueueNotify write) as well as from the loop. Every arming belongs to an *epoch*;
:meth:`Throttle.cancel` (device reset or close) and :meth:`Throttle.update` (a PATCH)
start a new one, so a timer that fires late for an old epoch does nothing.

Counters follow Firecracker's block and net metrics: ``throttled_events`` counts each
refusal and each queue notification that arrives while blocked
(``rate_limiter_throttled_events``); ``wakeups`` counts the timer's firings
(``rate_limiter_event_count``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial

from firelet.devices.protocols import Cancellable, Timers
from firelet.devices.rate_limiter import LimiterConfig, RateLimiter

NS_PER_S = 1_000_000_000


class Throttle:
    """One queue's limiter and wake-up timer; the device serialises calls to :meth:`admit`."""

    def __init__(self, limiter: RateLimiter, timers: Timers | None, resume: Callable[[], None]) -> None:
        if timers is None and not limiter.unlimited:
            raise ValueError("a rate-limited queue needs the event loop's timers (pass the loop)")
        self.limiter = limiter
        self._timers = timers
        self._resume = resume
        self._lock = threading.Lock()  # admit runs on the device's thread, the timer's calls on the loop's
        self._epoch = 0
        self._timer: Cancellable | None = None
        #: True from a refusal until the timer fires (or an update or cancel): take nothing.
        self.blocked = False
        self.throttled_events = 0
        self.wakeups = 0

    def admit(self, nbytes: int, nops: int = 1) -> bool:
        """Whether a request of ``nbytes`` and ``nops`` may be served now (its tokens are then taken).

        On False the device must leave the request for later and stop taking requests; the
        throttle has armed the timer that resumes it.
        """
        with self._lock:
            if self.blocked:
                return False
            if self.limiter.consume_io(nbytes, nops):
                return True
            self.throttled_events += 1
            self.blocked = True
            epoch, wait_s = self._epoch, self.limiter.wait_ns / NS_PER_S
        assert self._timers is not None  # a limiter that refuses has limits, so timers were required
        self._timers.call_soon(partial(self._arm, epoch, wait_s))
        return False

    def notified(self) -> bool:
        """A queue notification arrived: False (and counted) while blocked, so the device waits."""
        with self._lock:
            if self.blocked:
                self.throttled_events += 1
                return False
            return True

    def update(self, config: LimiterConfig) -> None:
        """Replace the buckets as a PATCH says (:meth:`RateLimiter.update_buckets`) and go on at once."""
        if self._timers is None:
            raise ValueError("a rate-limited queue needs the event loop's timers (pass the loop)")
        with self._lock:  # validates both buckets before changing either
            self.limiter.update_buckets(config.bandwidth, config.ops)
        if self.cancel():
            self._timers.call_soon(self._resume)

    def cancel(self) -> bool:
        """Forget a pending wake-up (device reset, close, update); returns whether the queue was blocked."""
        with self._lock:
            self._epoch += 1
            was_blocked, self.blocked = self.blocked, False
            timer, self._timer = self._timer, None
        if timer is not None and self._timers is not None:
            self._timers.call_soon(timer.cancel)
        return was_blocked

    # -- on the loop's thread -----------------------------------------------------------
    def _arm(self, epoch: int, wait_s: float) -> None:
        with self._lock:
            if epoch != self._epoch or not self.blocked or self._timer is not None:
                return
            assert self._timers is not None
            self._timer = self._timers.call_later(wait_s, partial(self._fire, epoch))

    def _fire(self, epoch: int) -> None:
        with self._lock:
            if epoch != self._epoch:
                return
            self._timer = None
            self.blocked = False
            self.wakeups += 1
        self._resume()
