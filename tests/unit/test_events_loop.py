"""The VMM's event loop: fds with any event mask, timers, calls from other threads, failures."""

from __future__ import annotations

import itertools
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firelet import threads
from firelet.events.loop import EPOLLET, EPOLLIN, EPOLLOUT, EventLoop, LoopStopped
from firelet.events.timers import TimerHandle, TimerHeap

T = TypeVar("T")


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


# -- fd subscribers with any event mask ----------------------------------------------


def _run_in_thread(loop: EventLoop) -> threading.Thread:
    return loop.start("test-loop")


def _stop(loop: EventLoop) -> None:
    loop.stop()
    assert loop.thread is not None
    loop.thread.join(5)
    assert not loop.thread.is_alive()
    loop.close()


def _wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the loop did not get there in time"
        time.sleep(0.005)


def _on_loop(loop: EventLoop, fn: Callable[[], T]) -> T:
    return loop.submit(fn).result(timeout=5)


def test_epollout_fires_only_once_a_full_socket_drains_and_the_callback_gets_the_mask() -> None:
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    sent = 0
    try:
        while True:
            sent += ours.send(b"x" * 65536)
    except BlockingIOError:
        pass
    loop = EventLoop()
    masks: list[int] = []
    writable = threading.Event()

    def on_ready(mask: int) -> None:
        masks.append(mask)
        loop.remove(ours.fileno())  # one wake-up is all a writer waiting for room needs
        writable.set()

    _run_in_thread(loop)
    _on_loop(loop, lambda: loop.add(ours.fileno(), EPOLLOUT, on_ready))
    assert not writable.wait(0.2), "a full socket is not writable"
    received = 0
    while received < sent:
        received += len(peer.recv(1 << 20))
    assert writable.wait(5)
    assert masks == [masks[0]] and masks[0] & select.EPOLLOUT and not masks[0] & select.EPOLLIN
    _stop(loop)
    ours.close()
    peer.close()


def test_modify_switches_a_subscriber_between_reading_and_writing() -> None:
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    loop = EventLoop()
    seen: list[str] = []
    done = threading.Event()

    def on_event(mask: int) -> None:
        if mask & select.EPOLLIN:
            seen.append(f"in:{ours.recv(100).decode()}")
            loop.modify(ours.fileno(), EPOLLOUT)  # now wait until a reply can go out
        elif mask & select.EPOLLOUT:
            ours.send(b"pong")
            seen.append("out")
            loop.remove(ours.fileno())
            done.set()

    _run_in_thread(loop)
    _on_loop(loop, lambda: loop.add(ours.fileno(), EPOLLIN, on_event))
    peer.send(b"ping")
    assert done.wait(5)
    assert seen == ["in:ping", "out"] and peer.recv(100) == b"pong"
    _stop(loop)
    ours.close()
    peer.close()


def test_edge_triggered_reader_is_called_once_per_arrival_not_while_data_waits() -> None:
    r, w = os.pipe()
    loop = EventLoop()
    calls: list[int] = []
    loop.add(r, EPOLLIN | EPOLLET, calls.append)  # never reads: level-triggered would spin
    _run_in_thread(loop)
    os.write(w, b"a")
    _wait_for(lambda: len(calls) >= 1)
    time.sleep(0.1)
    assert len(calls) == 1
    os.write(w, b"b")
    _wait_for(lambda: len(calls) >= 2)
    time.sleep(0.1)
    assert len(calls) == 2
    os.close(w)
    _wait_for(lambda: len(calls) >= 3)
    assert calls[-1] & select.EPOLLHUP  # the writer went away: the mask says so
    _stop(loop)
    os.close(r)


def test_a_removed_fd_is_never_served_again_even_within_the_same_round() -> None:
    loop = EventLoop()
    fds = [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(2)]
    served: list[int] = []

    def serve(i: int) -> None:
        served.append(i)
        other = fds[1 - i]
        loop.remove(other)  # whichever runs first silences the other

    for i, fd in enumerate(fds):
        loop.add_eventfd(fd, lambda i=i: serve(i))
    for fd in fds:
        os.eventfd_write(fd, 1)  # both ready before the loop's first epoll_wait
    _run_in_thread(loop)
    _wait_for(lambda: len(served) >= 1)
    _on_loop(loop, lambda: None)  # a round after the one that served
    _stop(loop)
    assert len(served) == 1
    for fd in fds:
        os.close(fd)


# -- timers ------------------------------------------------------------------------------


def test_timers_fire_in_deadline_order_and_not_before_their_deadline() -> None:
    loop = EventLoop()
    fired: list[tuple[str, float]] = []
    start = time.monotonic()
    for name, delay in (("c", 0.06), ("a", 0.02), ("b", 0.04), ("a2", 0.02)):
        loop.call_later(delay, lambda name=name, delay=delay: fired.append((name, time.monotonic() - start - delay)))
    loop.call_later(0.08, loop.stop)
    loop.run()
    loop.close()
    assert [name for name, _ in fired] == ["a", "a2", "b", "c"]  # equal deadlines: in the order set
    assert all(late >= 0 for _, late in fired)


def test_a_cancelled_timer_never_fires_and_cancel_after_firing_is_harmless() -> None:
    loop = EventLoop()
    fired: list[str] = []
    early = loop.call_later(0.01, lambda: fired.append("early"))
    doomed = loop.call_later(0.03, lambda: fired.append("doomed"))
    loop.call_later(0.02, doomed.cancel)  # cancelled by another timer, before its deadline
    loop.call_later(0.05, loop.stop)
    loop.run()
    early.cancel()
    doomed.cancel()
    loop.close()
    assert fired == ["early"]


def test_timers_set_from_callbacks_fire_and_a_zero_delay_waits_for_the_next_round() -> None:
    loop = EventLoop()
    order: list[str] = []

    def first() -> None:
        order.append("first")
        loop.call_later(0, lambda: order.append("zero"))
        loop.call_soon(lambda: order.append("soon"))
        loop.call_later(0.02, lambda: (order.append("later"), loop.stop()))

    loop.call_later(0.01, first)
    loop.call_later(0.01, lambda: order.append("same deadline"))  # due in the same round as first
    loop.run()
    loop.close()
    assert order == ["first", "same deadline", "soon", "zero", "later"]


def test_every_can_be_registered_after_start_and_cancelled() -> None:
    loop = EventLoop()
    ticks: list[float] = []
    _run_in_thread(loop)
    periodic = _on_loop(loop, lambda: loop.every(0.02, lambda: ticks.append(time.monotonic())))
    time.sleep(0.25)
    _on_loop(loop, periodic.cancel)
    count = len(ticks)
    time.sleep(0.1)
    _stop(loop)
    assert 4 <= count <= 15 and len(ticks) == count
    assert all(b - a >= 0.019 for a, b in itertools.pairwise(ticks))


def test_timers_and_fds_are_refused_from_other_threads_while_the_loop_runs() -> None:
    loop = EventLoop()
    _run_in_thread(loop)
    _on_loop(loop, lambda: None)  # the loop has certainly started
    with pytest.raises(RuntimeError, match="call_soon_threadsafe"):
        loop.call_later(0.1, lambda: None)
    with pytest.raises(RuntimeError, match="call_soon_threadsafe"):
        loop.every(0.1, lambda: None)
    fd = os.eventfd(0)
    with pytest.raises(RuntimeError, match="call_soon_threadsafe"):
        loop.add_reader(fd, lambda: None)
    _stop(loop)
    os.close(fd)


# -- calls from other threads ---------------------------------------------------------------


def test_submit_hands_back_results_and_exceptions_without_failing_the_loop() -> None:
    loop = EventLoop()
    failures: list[BaseException] = []
    loop.on_failure = failures.append
    _run_in_thread(loop)
    assert loop.submit(threading.current_thread).result(5).name == "test-loop"
    with pytest.raises(KeyError):
        loop.submit(lambda: {}["missing"]).result(5)
    assert failures == [] and loop.failure is None
    _stop(loop)


def test_calls_after_the_loop_ended_are_refused_not_left_hanging() -> None:
    loop = EventLoop()
    _run_in_thread(loop)
    loop.stop()
    loop.thread.join(5)
    assert loop.call_soon_threadsafe(lambda: None) is False
    with pytest.raises(LoopStopped):
        loop.submit(lambda: 1).result(timeout=1)
    loop.close()


def test_calls_queued_before_stop_still_run_and_in_order() -> None:
    loop = EventLoop()
    order: list[int] = []
    for i in range(5):
        loop.call_soon(lambda i=i: order.append(i))
    loop.call_soon(loop.stop)
    loop.call_soon(lambda: order.append(5))  # queued before the loop ended: it runs
    loop.run()
    loop.close()
    assert order == [0, 1, 2, 3, 4, 5]


def test_the_loop_thread_is_named_as_firecrackers_vmm_thread() -> None:
    loop = EventLoop()
    thread = loop.start()
    assert thread.name == threads.VMM == "fc_vmm"
    _stop(loop)


# -- property: any sequence of call_later/cancel -----------------------------------------

_op = st.one_of(
    st.tuples(st.just("later"), st.integers(0, 30)),  # delay in ms
    st.tuples(st.just("cancel"), st.integers(0, 40)),  # cancel the n-th timer set (if any) now
    st.tuples(st.just("cancel_when_fired"), st.integers(0, 40), st.integers(0, 40)),  # timer a cancels b
)


def _expected(handles: list[TimerHandle], cancelled_now: set[int], on_fire: dict[int, list[int]]) -> list[int]:
    """What must fire: simulate the heap by (deadline, order set), applying cancels as timers fire."""
    dead = set(cancelled_now)
    fired = []
    for i in sorted(range(len(handles)), key=lambda i: (handles[i].deadline, i)):
        if i in dead:
            continue
        fired.append(i)
        dead.update(on_fire.get(i, []))
    return fired


@settings(max_examples=30, deadline=None)
@given(st.lists(_op, max_size=25))
def test_any_sequence_of_call_later_and_cancel_fires_exactly_the_uncancelled_in_deadline_order(ops: list[tuple]) -> None:
    loop = EventLoop()
    handles: list[TimerHandle] = []
    fired: list[int] = []
    cancelled_now: set[int] = set()
    on_fire: dict[int, list[int]] = {}
    for op in ops:
        if op[0] == "later":
            i = len(handles)
            handles.append(loop.call_later(op[1] / 1000, lambda i=i: _fire(i)))
        elif op[0] == "cancel" and op[1] < len(handles):
            handles[op[1]].cancel()
            cancelled_now.add(op[1])
        elif op[0] == "cancel_when_fired" and max(op[1], op[2]) < len(handles):
            on_fire.setdefault(op[1], []).append(op[2])

    def _fire(i: int) -> None:
        fired.append(i)
        for j in on_fire.get(i, []):
            handles[j].cancel()

    loop.call_later(0.035, loop.stop)
    loop.run()
    loop.close()
    assert fired == _expected(handles, cancelled_now, on_fire)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.tuples(st.just("add"), st.floats(0, 100)),
                          st.tuples(st.just("cancel"), st.integers(0, 200)),
                          st.tuples(st.just("pop"), st.floats(0, 100))), max_size=200))
def test_timer_heap_pops_exactly_the_live_due_timers_in_order(ops: list[tuple]) -> None:
    heap = TimerHeap()
    handles: list[TimerHandle] = []
    live: dict[int, float] = {}
    popped: list[int] = []
    for op in ops:
        if op[0] == "add":
            live[len(handles)] = op[1]
            handles.append(heap.add(op[1], lambda: None))
        elif op[0] == "cancel" and op[1] < len(handles):
            handles[op[1]].cancel()
            live.pop(op[1], None)
        elif op[0] == "pop":
            due = sorted((d, i) for i, d in live.items() if d <= op[1])
            got = []
            while (h := heap.pop_due(op[1])) is not None:
                got.append(handles.index(h))
            assert got == [i for _, i in due]
            for i in got:
                del live[i]
            popped += got
        assert len(heap) == len(live)
    assert heap.next_deadline() == (min(live.values()) if live else None)


def _watched(loop: EventLoop) -> set[int]:
    """The fds the loop's epoll holds, as the kernel lists them (proc(5), /proc/PID/fdinfo: "tfd:")."""
    text = Path(f"/proc/self/fdinfo/{loop._epoll.fileno()}").read_text()
    return {int(line.split()[1]) for line in text.splitlines() if line.startswith("tfd:")}


def test_after_the_loop_ended_remove_leaves_the_epoll_alone_and_closing_the_fd_drops_it() -> None:
    """The thread that releases a VM may be one whose seccomp filter has no epoll_ctl: no call is made."""
    loop = EventLoop()
    fd = os.eventfd(0, os.EFD_NONBLOCK)
    loop.add_eventfd(fd, lambda: None)
    thread = loop.start("test-loop")
    loop.stop()
    thread.join(5)
    assert fd in _watched(loop)
    loop.remove(fd)  # from this thread, after the end: forgotten, not unregistered
    assert fd in _watched(loop)
    os.close(fd)
    assert fd not in _watched(loop)
    loop.close()
