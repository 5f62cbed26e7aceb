"""One-shot timers for the event loop: a heap of deadlines read by ``epoll_wait``'s timeout.

Python 3.11 has no ``os.timerfd_create``; a heap needs no fd at all. The loop
sleeps until the earliest deadline (or an fd event), then fires every timer that
is due, earliest first; timers with the same deadline fire in the order they were
set. A cancelled timer stays in the heap until it reaches the top (or until
cancelled ones outnumber the live ones, when the heap is rebuilt), so cancelling
is O(1). Single-threaded: only the loop's own thread touches a heap.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

Callback = Callable[[], None]

#: Rebuild the heap when more than this many cancelled timers are waiting in it (and they are the majority).
_COMPACT_AT = 64


class TimerHandle:
    """A timer set by ``call_later``: :meth:`cancel` stops it if it has not fired yet."""

    __slots__ = ("deadline", "callback", "cancelled", "_heap")

    def __init__(self, deadline: float, callback: Callback, heap: TimerHeap) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False
        self._heap: TimerHeap | None = heap

    def cancel(self) -> None:
        """Never fire (from the loop's thread). Harmless after it fired or was cancelled."""
        if not self.cancelled:
            self.cancelled = True
            if self._heap is not None:
                self._heap.note_cancelled()
                self._heap = None

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled else "pending" if self._heap is not None else "done"
        return f"<TimerHandle {state} at {self.deadline:.6f}>"


class TimerHeap:
    """Timers ordered by deadline, then by the order they were set."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._order = itertools.count()
        self._cancelled = 0

    def __len__(self) -> int:
        """How many timers may still fire."""
        return len(self._heap) - self._cancelled

    def add(self, deadline: float, callback: Callback) -> TimerHandle:
        handle = TimerHandle(deadline, callback, self)
        heapq.heappush(self._heap, (deadline, next(self._order), handle))
        return handle

    def note_cancelled(self) -> None:
        self._cancelled += 1
        if self._cancelled > _COMPACT_AT and self._cancelled * 2 > len(self._heap):
            self._heap = [entry for entry in self._heap if not entry[2].cancelled]
            heapq.heapify(self._heap)
            self._cancelled = 0

    def next_deadline(self) -> float | None:
        """The earliest deadline of a timer that may still fire, or None."""
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
            self._cancelled -= 1
        return heap[0][0] if heap else None

    def pop_due(self, now: float) -> TimerHandle | None:
        """The earliest timer due at ``now`` (taken out of the heap), or None."""
        deadline = self.next_deadline()
        if deadline is None or deadline > now:
            return None
        handle = heapq.heappop(self._heap)[2]
        handle._heap = None  # fired: a later cancel() has nothing to do
        return handle
