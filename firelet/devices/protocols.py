"""The seams of the device model: what every device offers the rest of the VMM.

A device sits on a bus and answers accesses at offsets in its range
(:class:`BusDevice`); it raises its interrupt through an :class:`Interrupt` it is
handed (it never sees KVM: the builder makes the line); it sets timers on the event
loop through :class:`Timers` (a rate-limited queue's wake-up) and has its own fds
watched through :class:`Readiness` (a TAP); it keeps its own counters
(:class:`Metered`); and it can hand out its state as a plain record and be put back
into that state (:class:`Stateful`), which snapshots and live updates build on.
These are structural protocols: a device implements them by having the methods,
not by inheriting from them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar, runtime_checkable

from firelet.records import Record


class BusDevice(Protocol):
    """Port I/O or MMIO: ``offset`` is relative to the start of the device's range on its bus.

    ``read`` fills all of ``data``; ``write`` consumes it. Both may be called from several
    vCPU threads at once (the device does its own locking) and must not raise on any
    guest-chosen offset, width or value.
    """

    def read(self, offset: int, data: memoryview) -> None: ...

    def write(self, offset: int, data: bytes | memoryview) -> None: ...


class Interrupt(Protocol):
    """The device's interrupt line: an edge each time it is triggered (a KVM irqfd in a VM)."""

    def trigger(self) -> None:
        """Raise (an edge on) the device's interrupt line."""


class Cancellable(Protocol):
    """A timer that was set: cancelling it (on the loop's thread) keeps it from firing."""

    def cancel(self) -> None: ...


class Timers(Protocol):
    """The part of the VMM's event loop a device may use: one-shot timers and deferred calls.

    A rate-limited queue sleeps on a timer rather than polling (the event loop's
    ``call_later``); ``call_soon`` runs work on the loop's thread from any thread,
    which is where timers are set and cancelled.
    """

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Cancellable: ...

    def call_soon(self, callback: Callable[[], None]) -> None: ...


class Readiness(Timers, Protocol):
    """Timers, and the loop watching a device's own fd (a TAP, a socket) for readiness.

    The callback runs on the loop's thread with the epoll events that fired;
    ``modify`` changes which it waits for (e.g. stop reading while the guest has no buffers).
    """

    def add(self, fd: int, events: int, callback: Callable[[int], None]) -> None: ...

    def modify(self, fd: int, events: int) -> None: ...

    def remove(self, fd: int) -> None: ...


@runtime_checkable
class KernelQueues(Protocol):
    """A virtio device whose queues the host kernel serves (vhost-net).

    The transport's notification eventfds (KVM ioeventfds on QueueNotify) are handed to
    the device for the kernel to wait on, instead of being watched by the event loop.
    """

    def take_queue_eventfds(self, fds: Sequence[int]) -> None: ...


class Metered(Protocol):
    """A device's own counters, cumulative since it was made, readable from any thread.

    The controller folds them into the VM's metrics; a device never writes to shared metrics.
    """

    @property
    def metrics(self) -> object: ...


S = TypeVar("S", bound=Record)


class Stateful(Protocol[S]):
    """Saves its guest-visible state as a record and restores it (on a device made from the same config).

    ``restore_state(save_state())`` leaves the device as it was, requests in flight included;
    a record that does not fit the device is refused with an error, never half applied.
    """

    def save_state(self) -> S: ...

    def restore_state(self, state: S) -> None: ...
