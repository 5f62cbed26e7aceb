"""virtio-blk held to its rate limiter: a test driver over real guest memory and a real image.

Most tests run the device on a fake clock with fake timers (the event loop's seam,
``firelet.devices.protocols.Timers``), so every instant is exact; one runs it on the
real :class:`~firelet.events.loop.EventLoop`, whose timer resumes the queue by itself.
"""

from __future__ import annotations

import copy
import heapq
import itertools
import struct
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_rate_limiter import FakeClock, RateLimiterModelLike, assert_window_bound

from firelet.config.model import RateLimiter as RateLimiterModel
from firelet.config.model import TokenBucket as TokenBucketModel
from firelet.devices.interrupt import CountingInterrupt
from firelet.devices.protocols import Timers
from firelet.devices.rate_limiter import NS_PER_MS, Bucket, RateLimiter
from firelet.devices.virtio import mmio
from firelet.devices.virtio.block import Block
from firelet.devices.virtio.block.request import (
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
)
from firelet.events.loop import EventLoop
from firelet.memory.guest import GuestMemory

from virtio_utils import DriverQueue, copy_memory, mmio_init, mmio_write32, new_memory

SECTORS = 64
QUEUE = 256  # room for every request a test leaves waiting (3 descriptors each)


class FakeHandle:
    def __init__(self, deadline: int, callback: Callable[[], None]) -> None:
        self.deadline, self.callback, self.cancelled = deadline, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class FakeTimers:
    """``call_later``/``call_soon`` on a :class:`FakeClock`: nothing runs until the test says so."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.soon: deque[Callable[[], None]] = deque()
        self._heap: list[tuple[int, int, FakeHandle]] = []
        self._order = itertools.count()

    def call_soon(self, callback: Callable[[], None]) -> None:
        self.soon.append(callback)

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> FakeHandle:
        handle = FakeHandle(self.clock.t + round(delay_s * 1e9), callback)
        heapq.heappush(self._heap, (handle.deadline, next(self._order), handle))
        return handle

    @property
    def live(self) -> list[FakeHandle]:
        return [h for _, _, h in self._heap if not h.cancelled]

    def run_soon(self) -> None:
        while self.soon:
            self.soon.popleft()()

    def run_due(self) -> None:
        """What the loop does in a round at the clock's time: queued calls, then due timers."""
        self.run_soon()
        while self._heap and self._heap[0][0] <= self.clock.t:
            _, _, handle = heapq.heappop(self._heap)
            if not handle.cancelled:
                handle.callback()
            self.run_soon()

    def advance_to_next(self) -> bool:
        """Jump the clock to the next live timer and run it; False if none is set."""
        live = self.live
        if not live:
            return False
        self.clock.t = max(self.clock.t, min(h.deadline for h in live))
        self.run_due()
        return True


@dataclass
class Sent:
    head: int
    kind: int
    nbytes: int
    status: int  # the status byte's guest address
    data_in: int
    expected: bytes


class Disk:
    """A limited drive behind virtio-mmio, with its driver queue and a record of what it served."""

    def __init__(self, tmp_path: Path, limiter: RateLimiter, timers: Timers, *, mem: GuestMemory | None = None,
                 drv: DriverQueue | None = None) -> None:
        self.path = tmp_path / "disk.img"
        if not self.path.exists():
            self.path.write_bytes(bytes((i * 13 + 5) & 0xFF for i in range(SECTORS * 512)))
        self.image = bytearray(self.path.read_bytes())  # what the disk should hold
        self.mem = mem if mem is not None else new_memory()
        self.block = Block(self.path, drive_id="limited", rate_limiter=limiter, timers=timers)
        self.irq = CountingInterrupt()
        self.transport = mmio.MmioTransport(self.mem, self.block, self.irq)
        if drv is None:
            drv = DriverQueue(self.mem, size=QUEUE)
            assert mmio_init(self.transport, [drv]) & mmio.STATUS_DRIVER_OK
        self.drv = drv
        self.sent: deque[Sent] = deque()
        self.served: list[Sent] = []

    def submit(self, kind: int, sector: int = 0, nsectors: int = 1, fill: int = 0) -> Sent:
        """Publish one request (no notify)."""
        nbytes = 512 * nsectors if kind in (VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT) else 0
        bufs = [(self.drv.alloc(16, struct.pack("<IIQ", kind, 0, sector)), 16, False)]
        expected, data_in = b"", 0
        if kind == VIRTIO_BLK_T_OUT:
            data = bytes([fill]) * nbytes
            bufs.append((self.drv.alloc(nbytes, data), nbytes, False))
            self.image[sector * 512 : sector * 512 + nbytes] = data
        elif kind == VIRTIO_BLK_T_IN:
            data_in = self.drv.alloc(nbytes)
            bufs.append((data_in, nbytes, True))
            expected = bytes(self.image[sector * 512 : sector * 512 + nbytes])
        elif kind == VIRTIO_BLK_T_GET_ID:
            data_in = self.drv.alloc(20)
            bufs.append((data_in, 20, True))
            expected = b"limited".ljust(20, b"\0")
        status = self.drv.alloc(1, b"\xee")
        bufs.append((status, 1, True))
        sent = Sent(self.drv.add_chain(bufs), kind, nbytes, status, data_in, expected)
        self.sent.append(sent)
        return sent

    def collect(self) -> list[Sent]:
        """What the device returned since the last call; checks order, status and data."""
        done = []
        for head, _length in self.drv.take_used():
            sent = self.sent.popleft()
            assert head == sent.head, "served out of order"
            assert self.mem.read_u8(sent.status) == VIRTIO_BLK_S_OK
            if sent.expected:
                assert self.mem.read(sent.data_in, len(sent.expected)) == sent.expected
            done.append(sent)
        self.served += done
        return done

    def close(self) -> None:
        self.block.close()
        assert self.path.read_bytes() == bytes(self.image)
        self.mem.close()


def limiter(clock: FakeClock, bandwidth: Bucket | None = None, ops: Bucket | None = None) -> RateLimiter:
    return RateLimiter.from_config(RateLimiterModelLike(bandwidth, ops), clock=clock)


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[tuple[Disk, FakeTimers, FakeClock]]:
    clock = FakeClock()
    timers = FakeTimers(clock)
    disk = Disk(tmp_path, limiter(clock, ops=Bucket(size=2, refill_time=100)), timers)
    timers.run_soon()  # the look activation asks for
    yield disk, timers, clock
    disk.close()


# -- behaviour ----------------------------------------------------------------------
def test_a_throttled_queue_waits_for_one_timer_and_resumes_in_order(fake: tuple[Disk, FakeTimers, FakeClock]) -> None:
    disk, timers, clock = fake
    for i in range(5):
        disk.submit(VIRTIO_BLK_T_IN, sector=i)
    disk.transport.notify(0)
    assert len(disk.collect()) == 2  # the bucket starts full: two ops
    metrics = disk.block.metrics
    assert metrics.rate_limiter_throttled_events == 1 and metrics.read_ops == 2
    timers.run_soon()  # the loop arms the timer
    (timer,) = timers.live
    assert timer.deadline == clock.t + 50 * NS_PER_MS  # one op refills in 50 ms

    disk.transport.notify(0)  # the driver kicks again while throttled: counted, nothing served
    timers.run_soon()
    assert disk.collect() == [] and metrics.rate_limiter_throttled_events == 2 and len(timers.live) == 1

    clock.t = timer.deadline - 1
    timers.run_due()
    assert disk.collect() == []
    irqs = disk.irq.count
    disk.drv.set_used_event(disk.drv.used_seen)  # as Linux: interrupt me at the next completion
    while timers.advance_to_next():
        assert len(timers.live) <= 1 and len(disk.collect()) == 1  # one op refilled per wake-up
        assert disk.irq.count == irqs + 1  # a completion served by the timer interrupts the driver
        irqs = disk.irq.count
        disk.drv.set_used_event(disk.drv.used_seen)
    assert len(disk.served) == 5 and not disk.sent  # nothing lost, in order (collect checks)
    assert metrics.rate_limiter_event_count == 3 and metrics.rate_limiter_throttled_events == 4


def test_flush_and_get_id_cost_an_op_and_no_bytes(tmp_path: Path) -> None:
    clock = FakeClock()
    timers = FakeTimers(clock)
    disk = Disk(tmp_path, limiter(clock, bandwidth=Bucket(size=512, refill_time=1000)), timers)
    for kind in (VIRTIO_BLK_T_IN, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_FLUSH):
        disk.submit(kind)
    disk.submit(VIRTIO_BLK_T_OUT, 3, fill=0xAB)
    disk.transport.notify(0)
    assert [s.kind for s in disk.collect()] == [VIRTIO_BLK_T_IN, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID,
                                                VIRTIO_BLK_T_FLUSH]
    timers.run_soon()
    assert timers.advance_to_next() and [s.kind for s in disk.collect()] == [VIRTIO_BLK_T_OUT]
    assert clock.t == 10**12 + 1000 * NS_PER_MS
    disk.close()


def test_a_live_update_takes_effect_at_once(fake: tuple[Disk, FakeTimers, FakeClock]) -> None:
    disk, timers, clock = fake
    for i in range(6):
        disk.submit(VIRTIO_BLK_T_OUT, i, fill=i)
    disk.transport.notify(0)
    timers.run_soon()
    assert len(disk.collect()) == 2 and len(timers.live) == 1
    old = timers.live[0]
    # PATCH: ops lifted (size 0), bandwidth now 1024 bytes/s: the queue goes on at the same instant
    disk.block.update_rate_limiter(RateLimiterModel(bandwidth=TokenBucketModel(size=1024, refill_time=1000),
                                                    ops=TokenBucketModel(size=0, refill_time=0)))
    start = clock.t
    timers.run_soon()
    assert old.cancelled and len(disk.collect()) == 2  # the new, full bucket: 1024 bytes
    assert disk.block.throttle.limiter.ops is None
    while timers.advance_to_next():
        disk.collect()
    assert len(disk.served) == 6 and clock.t - start == 1000 * NS_PER_MS  # the last 1024 bytes: one refill
    with pytest.raises(ValueError, match=r"bandwidth\.refill_time: expected int <= "):
        disk.block.update_rate_limiter(RateLimiterModelLike(Bucket(1, 2**63), None))


def test_an_update_of_an_unthrottled_queue_arms_nothing(fake: tuple[Disk, FakeTimers, FakeClock]) -> None:
    disk, timers, _ = fake
    disk.block.update_rate_limiter(RateLimiterModel(ops=TokenBucketModel(size=1, refill_time=10)))
    timers.run_soon()
    assert not timers.live and disk.block.metrics.rate_limiter_event_count == 0


def test_reset_and_close_cancel_the_timer(fake: tuple[Disk, FakeTimers, FakeClock]) -> None:
    disk, timers, _ = fake
    for i in range(3):
        disk.submit(VIRTIO_BLK_T_IN, i)
    disk.transport.notify(0)
    timers.run_soon()
    (timer,) = timers.live
    mmio_write32(disk.transport, mmio.STATUS, 0)  # the driver resets the device
    timers.run_soon()
    assert timer.cancelled and not disk.block.throttle.blocked
    timer.callback()  # even a timer that fires anyway does nothing for a reset device
    assert disk.block.metrics.rate_limiter_event_count == 0
    disk.served, disk.sent = [], deque()

    drv = DriverQueue(disk.mem, size=QUEUE, data_start=0x300000)
    assert mmio_init(disk.transport, [drv]) & mmio.STATUS_DRIVER_OK
    disk.drv = drv
    for i in range(3):
        disk.submit(VIRTIO_BLK_T_IN, i)
    disk.transport.notify(0)
    timers.run_soon()
    assert len(disk.collect()) == 0 and len(timers.live) == 1  # the bucket was spent before the reset
    (timer,) = timers.live
    disk.block.close()
    timers.run_soon()
    assert timer.cancelled


def test_a_request_held_back_at_a_save_is_served_after_the_restore(tmp_path: Path) -> None:
    clock = FakeClock()
    timers = FakeTimers(clock)
    disk = Disk(tmp_path, limiter(clock, ops=Bucket(size=1, refill_time=1000)), timers)
    timers.run_soon()
    sent = [disk.submit(VIRTIO_BLK_T_OUT, 1, fill=0x11), disk.submit(VIRTIO_BLK_T_IN, 1)]
    disk.transport.notify(0)
    assert disk.collect() == sent[:1]  # the read waits, un-popped
    block_state, transport_state = disk.block.save_state(), disk.transport.save_state()
    mem2 = copy_memory(disk.mem)
    disk.block.close()
    disk.mem.close()

    clock2 = FakeClock()
    timers2 = FakeTimers(clock2)
    drv2 = copy.copy(disk.drv)
    drv2.mem = mem2
    # the limiter comes from the drive's config again, full (its tokens are not in the record)
    restored = Disk(tmp_path, limiter(clock2, ops=Bucket(size=1, refill_time=1000)), timers2, mem=mem2, drv=drv2)
    restored.block.restore_state(block_state)
    restored.transport.restore_state(transport_state)
    restored.sent = deque(sent[1:])
    timers2.run_soon()  # activation looks at the ring: no notify needed
    assert restored.collect() == sent[1:]
    restored.close()


def test_a_real_event_loop_timer_resumes_the_queue(tmp_path: Path) -> None:
    loop = EventLoop()
    thread = loop.start()
    limit = RateLimiter.from_config(RateLimiterModel(ops=TokenBucketModel(size=2, refill_time=40)))
    disk = Disk(tmp_path, limit, loop)
    try:
        for i in range(8):
            disk.submit(VIRTIO_BLK_T_IN, i)
        loop.submit(lambda: disk.transport.notify(0)).result(10)  # as the queue's ioeventfd would
        deadline = time.monotonic() + 30  # a bound against a hang, not a timing check
        while len(disk.served) < 8 and time.monotonic() < deadline:
            time.sleep(0.005)
            loop.submit(disk.collect).result(10)
        assert len(disk.served) == 8 and not disk.sent
        metrics = disk.block.metrics
        assert metrics.rate_limiter_throttled_events >= 1 and metrics.rate_limiter_event_count >= 1
    finally:
        loop.submit(disk.block.close).result(10)
        loop.stop()
        thread.join(10)
        loop.close()
        disk.close()  # closing again is harmless


def test_a_limiter_needs_the_loop(tmp_path: Path) -> None:
    (tmp_path / "d.img").write_bytes(bytes(512))
    with pytest.raises(ValueError, match="needs the event loop"):
        Block(tmp_path / "d.img", rate_limiter=limiter(FakeClock(), ops=Bucket(1, 1)))
    block = Block(tmp_path / "d.img", rate_limiter=limiter(FakeClock()))  # an unlimited limiter needs none
    with pytest.raises(ValueError, match="needs the event loop"):
        block.update_rate_limiter(RateLimiterModel(ops=TokenBucketModel(size=1, refill_time=1)))
    block.close()


# -- the limit holds, whatever the driver does -----------------------------------------
small_buckets = st.builds(Bucket, size=st.integers(1, 8192), refill_time=st.integers(1, 500),
                          one_time_burst=st.one_of(st.none(), st.integers(0, 4096)))
ops_buckets = st.builds(Bucket, size=st.integers(1, 6), refill_time=st.integers(1, 500),
                        one_time_burst=st.one_of(st.none(), st.integers(0, 3)))
kinds = st.sampled_from([VIRTIO_BLK_T_IN, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID])
actions = st.one_of(
    st.tuples(st.just("submit"), st.lists(st.tuples(kinds, st.integers(0, SECTORS - 8), st.integers(1, 8)),
                                          min_size=1, max_size=4)),
    st.tuples(st.just("gap"), st.integers(0, 600 * NS_PER_MS)),
    st.tuples(st.just("notify"), st.just(0)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bw=small_buckets, ops=ops_buckets, script=st.lists(actions, min_size=1, max_size=25))
def test_bytes_and_ops_served_never_exceed_the_buckets(tmp_path: Path, bw: Bucket, ops: Bucket,
                                                      script: list[tuple[str, object]]) -> None:
    clock = FakeClock()
    timers = FakeTimers(clock)
    disk = Disk(tmp_path, limiter(clock, bw, ops), timers)
    admitted: list[tuple[int, int]] = []  # (instant, bytes) of each request served
    refusals = 0

    def step() -> None:
        for sent in disk.collect():
            admitted.append((clock.t, sent.nbytes))
        assert len(timers.live) <= 1  # one timer at most, and only while throttled
        assert not timers.live or disk.block.throttle.blocked

    try:
        for how, arg in script:
            if how == "submit":
                assert isinstance(arg, list)
                for n, (kind, sector, nsectors) in enumerate(arg):
                    disk.submit(kind, sector, nsectors, fill=(len(disk.sent) + n) & 0xFF)
                disk.transport.notify(0)
            elif how == "notify":
                disk.transport.notify(0)
            else:
                assert isinstance(arg, int)
                clock.t += arg
            timers.run_due()
            step()
        for _ in range(10_000):  # then let time run until the driver has everything back
            if not timers.advance_to_next():
                break
            step()
        timers.run_due()
        step()
        assert not disk.sent and len(admitted) == len(disk.served)  # none lost
        refusals = disk.block.throttle.limiter.throttled_events
        assert disk.block.metrics.rate_limiter_throttled_events >= refusals
        assert_window_bound([(t, b) for t, b in admitted if b], bw)
        assert_window_bound([(t, 1) for t, _ in admitted], ops)
    finally:
        disk.close()
        for path in tmp_path.iterdir():
            path.unlink()
