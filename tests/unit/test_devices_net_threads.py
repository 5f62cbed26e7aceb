"""virtio-net against a driver that behaves as Linux's does, on its own thread, with the loop running.

The driver (:class:`LinuxRing`) keeps Linux virtio_ring's bookkeeping: a free list of
descriptors, the data of every chain it made available (``desc_state``), EVENT_IDX on
both sides (kick only when avail idx crosses avail_event; ask for an interrupt with
used_event, 3/4 of the way as ``virtqueue_enable_cb_delayed`` does), and the same
checks on what comes back ("id N is not a head!"). It kicks the transmit queue as a
vCPU does (a QueueNotify write on its own thread) or through the loop (an ioeventfd),
while the host end streams frames in. Interrupts are the only wake-up it has: a
missed one shows as a stall, as it does in a guest.
"""

from __future__ import annotations

import struct
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from firelet.devices.rate_limiter import Bucket, RateLimiter
from firelet.devices.virtio import mmio
from firelet.devices.virtio.net.frames import VNET_HDR_LEN
from firelet.devices.virtio.queue import VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE
from firelet.memory.guest import GuestMemory

from net_driver import RX_DATA, TX_DATA, NetDriver, PairTap
from virtio_utils import DriverQueue, mmio_write32

HDR = bytes(VNET_HDR_LEN)
RX_BUF = 700  # receive buffers smaller than most frames: mergeable frames of 1-3 buffers
SLOT = 2048  # one data buffer (and one indirect table) per descriptor index
TABLES = 0x1800000


class RingBroken(AssertionError):
    """What Linux's BAD_RING reports, for the test to fail with."""


def need_event(event: int, new: int, old: int) -> bool:
    """vring_need_event (virtio 1.2 §2.7.10)."""
    return (new - event - 1) & 0xFFFF < (new - old) & 0xFFFF


class LinuxRing:
    """One split ring, driver side, as Linux's virtio_ring keeps it."""

    def __init__(self, mem: GuestMemory, layout: DriverQueue, data: int) -> None:
        self.mem, self.q, self.data = mem, layout, data
        self.size = layout.size
        self.free = list(range(self.size))  # free descriptor indexes
        self.state: dict[int, tuple[list[int], int]] = {}  # head -> (its descriptors, its first buffer)
        self.avail_idx = 0
        self.num_added = 0
        self.last_used = 0

    def add(self, buffers: list[bytes | int], indirect: bool = False) -> bool:
        """Make a chain available: bytes to send, or (ints) writable lengths; False when the ring is full."""
        need = 1 if indirect else len(buffers)
        if len(self.free) < need:
            return False
        descs = [self.free.pop() for _ in range(need)]
        head = descs[0]
        entries = []
        for i, content in enumerate(buffers):
            addr = self.data + SLOT * (head if indirect else descs[i]) + (256 * i if indirect else 0)
            if isinstance(content, bytes):
                self.mem.write(addr, content)
                entries.append((addr, len(content), 0))
            else:
                entries.append((addr, content, VIRTQ_DESC_F_WRITE))
        if indirect:
            table = TABLES + SLOT * head
            for i, (addr, length, flags) in enumerate(entries):
                more = i < len(entries) - 1
                self.mem.write(table + 16 * i, struct.pack("<QIHH", addr, length,
                                                           flags | (VIRTQ_DESC_F_NEXT if more else 0), i + 1 if more else 0))
            self.q.write_desc(head, table, 16 * len(entries), VIRTQ_DESC_F_INDIRECT)
        else:
            for i, (addr, length, flags) in enumerate(entries):
                more = i < len(entries) - 1
                self.q.write_desc(descs[i], addr, length, flags | (VIRTQ_DESC_F_NEXT if more else 0),
                                  descs[i + 1] if more else 0)
        self.state[head] = (descs, entries[0][0])
        self.mem.write_u16(self.q.avail_addr + 4 + 2 * (self.avail_idx % self.size), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.mem.write_u16(self.q.avail_addr + 2, self.avail_idx)  # after the entry, as virtio_wmb orders it
        self.num_added += 1
        return True

    def kick_prepare(self) -> bool:
        old, new = (self.avail_idx - self.num_added) & 0xFFFF, self.avail_idx
        self.num_added = 0
        return need_event(self.q.avail_event(), new, old)

    def get_buf(self) -> tuple[int, int] | None:
        """The next used chain's first buffer and length, checked as virtqueue_get_buf_ctx_split does."""
        if self.last_used == self.q.used_idx():
            return None
        slot = self.q.used_addr + 4 + 8 * (self.last_used % self.size)
        head, length = struct.unpack("<II", self.mem.read(slot, 8))
        if head >= self.size:
            raise RingBroken(f"id {head} out of range")
        if head not in self.state:
            raise RingBroken(f"id {head} is not a head!")
        descs, addr = self.state.pop(head)
        self.free.extend(descs)
        self.last_used = (self.last_used + 1) & 0xFFFF
        return addr, length

    def disable_cb(self) -> None:
        self.q.set_used_event(0)  # Linux's value for "no interrupts" under EVENT_IDX

    def enable_cb_delayed(self) -> bool:
        """Ask for an interrupt 3/4 of the way through what is outstanding; False if that is passed already."""
        bufs = (self.avail_idx - self.last_used) & 0xFFFF
        bufs = bufs * 3 // 4
        self.q.set_used_event(self.last_used + bufs)
        return (self.q.used_idx() - self.last_used) & 0xFFFF <= bufs

    def enable_cb_prepare(self) -> bool:
        """Ask for an interrupt at the next used chain; False if one is there already."""
        self.q.set_used_event(self.last_used)
        return self.q.used_idx() == self.last_used


class EventInterrupt:
    """The interrupt line as a threading.Event the driver waits on."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.count = 0

    def trigger(self) -> None:
        self.count += 1
        self.event.set()


@dataclass(frozen=True)
class Limits:
    """A limiter's settings, shaped as the config model's RateLimiter."""

    bandwidth: Bucket | None = None
    ops: Bucket | None = None


#: Limiters that throttle both directions many times over a run (size, refill_time in ms).
THROTTLED = {"tx_limiter": RateLimiter.from_config(Limits(ops=Bucket(40, 10))),
             "rx_limiter": RateLimiter.from_config(Limits(bandwidth=Bucket(200_000, 10)))}


@pytest.fixture(params=["plain", "throttled"])
def rig(request: pytest.FixtureRequest) -> Iterator[tuple[NetDriver, EventInterrupt]]:
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads interleave as a vCPU and the VMM do: at any bytecode
    request.addfinalizer(lambda: sys.setswitchinterval(interval))
    d = NetDriver(PairTap(), **(THROTTLED if request.param == "throttled" else {}))
    irq = EventInterrupt()
    d.transport.interrupt = irq  # type: ignore[assignment]  # any object with trigger() will do
    d.start()
    yield d, irq
    d.close()


def _frame(seq: int, size: int) -> bytes:
    """Frame ``seq``: its number first, then a pattern that depends on it."""
    return seq.to_bytes(4, "little") + bytes((seq + i) & 0xFF for i in range(size - 4))


@pytest.mark.parametrize("kick_on", ["vcpu", "loop"])
def test_a_linux_like_driver_streams_both_ways_without_a_bad_ring_or_a_missed_interrupt(
        rig: tuple[NetDriver, EventInterrupt], kick_on: str) -> None:
    d, irq = rig
    tap = d.net.tap
    assert isinstance(tap, PairTap)
    count = 3000
    tx = LinuxRing(d.mem, d.txq, TX_DATA)
    rx = LinuxRing(d.mem, d.rxq, RX_DATA)
    received: list[bytes] = []
    sent_out: list[bytes] = []
    failures: list[BaseException] = []

    def kick(index: int) -> None:
        if kick_on == "vcpu":
            mmio_write32(d.transport, mmio.QUEUE_NOTIFY, index)  # a vCPU's MMIO exit, on the driver's thread
        else:
            d.loop.call_soon_threadsafe(lambda: d.transport.notify(index))  # an ioeventfd, on the loop

    def host_reader() -> None:
        try:
            while len(sent_out) + d.net.metrics.tap_write_fails < count:
                try:
                    sent_out.append(tap.peer.recv(1 << 17))
                except TimeoutError:
                    continue
        except BaseException as exc:
            failures.append(exc)

    def host_writer() -> None:
        try:
            for seq in range(count):
                tap.peer.sendall(HDR + _frame(seq, _size(seq)))
        except BaseException as exc:
            failures.append(exc)

    tap.peer.settimeout(0.5)
    threads = [threading.Thread(target=host_reader, daemon=True), threading.Thread(target=host_writer, daemon=True)]
    for t in threads:
        t.start()
    while rx.add([RX_BUF]):
        pass
    kick(0)
    next_tx = 0
    while (next_tx < count or tx.state or len(received) < count) and not failures:
        progress = 0
        # Receive (NAPI): take what is used, give the buffers back, kick if the device asked for it.
        rx.disable_cb()
        while (got := rx.get_buf()) is not None:
            addr, length = got
            data = d.mem.read(addr, length)
            for _ in range(int.from_bytes(data[10:12], "little") - 1):  # num_buffers: the frame's other parts
                more = rx.get_buf()
                if more is None:  # Linux drops the frame, then takes the late buffers for frames
                    raise RingBroken(f"rx error: a frame's buffers are not all used ({len(received)} frames in)")
                data += d.mem.read(*more)
                assert rx.add([RX_BUF])
            received.append(data[VNET_HDR_LEN:])
            assert rx.add([RX_BUF])
            progress += 1
        if progress and rx.kick_prepare():
            kick(0)
        # Transmit (start_xmit): reclaim, then add what fits, one kick per batch.
        tx.disable_cb()
        while tx.get_buf() is not None:
            progress += 1
        added = 0
        while next_tx < count and added < 32:
            frame = _frame(next_tx, _size(next_tx))
            buffers = [HDR + frame] if next_tx % 3 == 0 else [HDR, frame]
            if not tx.add(buffers, indirect=next_tx % 3 == 1):
                break
            next_tx += 1
            added += 1
        if added and tx.kick_prepare():
            kick(1)
        if progress or added:
            continue
        # Nothing to do: enable interrupts as Linux leaves them, look once more, then sleep until one.
        irq.event.clear()
        if not rx.enable_cb_prepare() or (tx.state and not tx.enable_cb_delayed()):
            continue
        assert irq.event.wait(10), (f"no interrupt in 10 s: {len(tx.state)} transmit chains outstanding, "
                                    f"{len(received)} of {count} frames received")
    assert not failures, failures
    for t in threads:
        t.join(30)
    # Every frame arrives whole and in order, but for those the full socket refused (dropped, counted).
    seqs = [int.from_bytes(f[VNET_HDR_LEN:VNET_HDR_LEN + 4], "little") for f in sent_out]
    assert seqs == sorted(set(seqs)) and len(seqs) + d.net.metrics.tap_write_fails == count
    assert [f[VNET_HDR_LEN:] for f in sent_out] == [_frame(i, _size(i)) for i in seqs]
    assert received == [_frame(i, _size(i)) for i in range(count)]
    m = d.net.metrics
    assert (m.tx_packets_count, m.rx_packets_count, m.tx_fails, m.rx_fails) == (len(seqs), count, 0, 0)


def _size(seq: int) -> int:
    return 60 + seq * 7 % 1400


#: Linux's mergeable receive buffers are about this big; a GSO frame takes dozens of them.
MERGEABLE_BUF = 1536
NAPI_BUDGET = 64


@pytest.mark.parametrize("kick_on", ["vcpu", "loop"])
def test_big_frames_over_many_buffers_with_napi_refill_never_return_a_bad_head(
        rig: tuple[NetDriver, EventInterrupt], kick_on: str) -> None:
    """Frames of up to 64 KiB over 1536-byte buffers, the driver refilling only as NAPI does (when more
    than half a budget is free), so the device often finds too few buffers for a frame and must give
    back what it popped; with and without an RX limiter whose buckets a PATCH keeps replacing."""
    d, irq = rig
    tap = d.net.tap
    assert isinstance(tap, PairTap)
    count = 200
    sizes = [65000 - seq * 7919 % 64900 for seq in range(count)]  # the first needs 43 buffers
    rx = LinuxRing(d.mem, d.rxq, RX_DATA)
    received: list[bytes] = []
    done = threading.Event()

    def kick() -> None:
        if kick_on == "vcpu":
            mmio_write32(d.transport, mmio.QUEUE_NOTIFY, 0)
        else:
            d.loop.call_soon_threadsafe(lambda: d.transport.notify(0))

    def host_writer() -> None:
        for seq in range(1, count):
            tap.peer.sendall(HDR + _frame(seq, sizes[seq]))

    def patcher() -> None:  # PATCH storms: each replaces the buckets and wakes the queue
        rates = [100_000, 400_000, 1_600_000]
        for i in range(10_000):
            if done.wait(0.003):
                return
            d.net.update_rate_limiters(Limits(bandwidth=Bucket(rates[i % 3], 10)), None)

    tap.peer.sendall(HDR + _frame(0, sizes[0]))
    for _ in range(30):  # too few for the first frame: the device must wait, taking nothing
        rx.add([MERGEABLE_BUF])
    kick()
    deadline = time.monotonic() + 10
    while not d.net.metrics.no_rx_avail_buffer:
        assert time.monotonic() < deadline, "the device never found the ring short"
        time.sleep(0.001)
    assert rx.get_buf() is None
    threads = [threading.Thread(target=host_writer, daemon=True)]
    if not d.net.rx_limiter.unlimited:
        threads.append(threading.Thread(target=patcher, daemon=True))
    for t in threads:
        t.start()
    try:
        while len(received) < count:
            rx.disable_cb()
            polled = 0
            while polled < NAPI_BUDGET and (got := rx.get_buf()) is not None:
                data = d.mem.read(*got)
                for _ in range(int.from_bytes(data[10:12], "little") - 1):
                    more = rx.get_buf()
                    if more is None:
                        raise RingBroken(f"rx error: a frame's buffers are not all used ({len(received)} frames in)")
                    data += d.mem.read(*more)
                received.append(data[VNET_HDR_LEN:])
                polled += 1
            if len(rx.free) > NAPI_BUDGET // 2:
                added = 0
                while rx.add([MERGEABLE_BUF]):
                    added += 1
                if added and rx.kick_prepare():
                    kick()
            if polled == NAPI_BUDGET or len(received) == count:
                continue
            irq.event.clear()
            if not rx.enable_cb_prepare():
                continue
            assert irq.event.wait(10), f"no interrupt in 10 s: {len(received)} of {count} frames received"
    finally:
        done.set()
    assert received == [_frame(i, sizes[i]) for i in range(count)]
    assert d.net.metrics.rx_fails == 0
