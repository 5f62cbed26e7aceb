"""virtio-net's rules, over a socketpair standing for the TAP (one datagram = header + frame).

The device, its transport, the guest memory and the event loop are the real ones; the
host end is an AF_UNIX SOCK_SEQPACKET pair, which keeps frame boundaries as a TAP does,
so the tests can write any frame and read exactly what the device wrote. Only the two
TAP ioctls are recorded instead of made. The loop runs on its own thread where a test
needs timers; elsewhere the test calls the transport itself (no loop thread running).
"""

from __future__ import annotations

import itertools
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from firelet.devices.rate_limiter import Bucket, RateLimiter
from firelet.devices.virtio import mmio
from firelet.devices.virtio.net import Net, NetState
from firelet.devices.virtio.net.frames import (
    MAX_BUFFER_LEN,
    VIRTIO_NET_F_CSUM,
    VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VNET_HDR_LEN,
)
from firelet.devices.virtio.net.tap import TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_UFO
from firelet.devices.virtio.queue import VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE
from firelet.metrics import Metrics
from firelet.records import RecordError, from_dict, to_dict
from firelet.vstate.device_metrics import fold_device_metrics
from firelet.vstate.device_registry import BusKind, DeviceEntry, DeviceRegistry, Slot

from net_driver import GUEST_MAC, MEM, RX_DATA, TX_DATA, NetDriver, PairTap, wait_for
from virtio_utils import copy_memory

HDR = bytes(VNET_HDR_LEN)


@dataclass(frozen=True)
class Limits:
    """A limiter's settings, shaped as the config model's RateLimiter."""

    bandwidth: Bucket | None = None
    ops: Bucket | None = None


def _driver(**kwargs: object) -> NetDriver:
    return NetDriver(PairTap(), **kwargs)  # type: ignore[arg-type]  # kwargs are Net's keywords


@pytest.fixture
def drv() -> Iterator[NetDriver]:
    d = _driver()
    yield d
    d.close()


def _tap(d: NetDriver) -> PairTap:
    assert isinstance(d.net.tap, PairTap)
    return d.net.tap


def frame_of(n: int, seed: int = 0) -> bytes:
    return bytes((i * 31 + seed) & 0xFF for i in range(n))


# -- features, config space, activation ----------------------------------------------------------
def test_features_config_space_and_offloads_follow_what_the_driver_accepted(drv: NetDriver) -> None:
    config = bytearray(8)
    drv.transport.read(mmio.CONFIG, memoryview(config))
    assert bytes(config[:6]) == GUEST_MAC and drv.net.has_feature(VIRTIO_NET_F_MAC)
    tap = _tap(drv)
    assert tap.vnet_hdr_size == 12 and tap.offload == TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_UFO
    assert drv.net.metrics.activate_fails == 0
    drv.transport.write(mmio.CONFIG, b"\1\2")  # a MAC the device was given is not the driver's to change
    drv.transport.read(mmio.CONFIG, memoryview(config))
    assert bytes(config[:6]) == GUEST_MAC and drv.net.metrics.cfg_fails == 1


def test_without_guest_csum_the_tap_gets_no_offloads_and_without_a_mac_none_is_offered() -> None:
    probe = _driver(guest_mac=None)
    assert not probe.net.avail_features >> VIRTIO_NET_F_MAC & 1
    features = probe.net.avail_features & ~(1 << VIRTIO_NET_F_GUEST_CSUM)
    probe.close()
    d = _driver(guest_mac=None, features=features)
    try:
        assert _tap(d).offload == 0
        d.transport.write(mmio.CONFIG, bytes.fromhex("0a0b0c0d0e0f"))  # the driver may set one then
        assert d.net.config_space()[:6] == bytes.fromhex("0a0b0c0d0e0f")
    finally:
        d.close()


# -- the data path -------------------------------------------------------------------------------
def test_transmit_writes_header_and_frame_and_receive_delivers_with_num_buffers(drv: NetDriver) -> None:
    tap = _tap(drv)
    frame = frame_of(60)
    drv.send(frame)
    assert tap.take() == HDR + frame
    assert drv.txq.take_used() == [(0, 0)]
    drv.post_rx(4, 1526)
    tap.inject(frame_of(100, 7))
    drv.notify(0)  # the loop is not running: poll the device as the TAP callback would
    [(header, count, got)] = drv.frames()
    assert count == 1 and header[:10] == HDR[:10] and got == frame_of(100, 7)
    m = drv.net.metrics
    assert (m.tx_packets_count, m.tx_bytes_count, m.rx_packets_count, m.rx_bytes_count) == (1, 60, 1, 100)


def test_a_chain_split_anywhere_and_indirect_is_the_same_frame(drv: NetDriver) -> None:
    tap = _tap(drv)
    data = HDR + frame_of(200)
    addr = drv.txq.alloc(len(data), data)
    drv.txq.add_chain([(addr, 5, False), (addr + 5, 0, False), (addr + 5, 150, False), (addr + 155, 57, False)])
    drv.notify(1)
    assert tap.take() == data
    drv.txq.add_indirect_chain([(addr, 12, False), (addr + 12, 200, False)])
    drv.notify(1)
    assert tap.take() == data


def test_mergeable_receive_spreads_a_large_frame_over_several_chains(drv: NetDriver) -> None:
    assert drv.net.has_feature(VIRTIO_NET_F_MRG_RXBUF)
    drv.post_rx(60, 1536)
    big = frame_of(65550, 3)
    _tap(drv).inject(big)
    drv.notify(0)
    [(_, count, got)] = drv.frames()
    assert count == -(-(65550 + 12) // 1536) and got == big


def test_a_frame_bigger_than_the_whole_ring_is_dropped_not_waited_for() -> None:
    d = _driver(size=16)
    try:
        d.post_rx(16, 256)
        _tap(d).inject(frame_of(5000))
        d.notify(0)
        assert [length for _, length in d.rxq.take_used()] == [0] * 16
        assert d.net.metrics.rx_fails == 1
        d.post_rx(2, 1526)
        _tap(d).inject(frame_of(64))
        d.notify(0)
        assert [f for _, _, f in d.frames()] == [frame_of(64)]
    finally:
        d.close()


def test_a_frame_is_kept_when_buffers_run_out_halfway_and_delivered_later(drv: NetDriver) -> None:
    drv.post_rx(2, 1536)
    big = frame_of(9000, 5)
    _tap(drv).inject(big)
    drv.notify(0)
    assert drv.rxq.take_used() == [] and drv.net.metrics.no_rx_avail_buffer == 1
    drv.post_rx(8, 1536)
    [(_, count, got)] = drv.frames()
    assert count == 6 and got == big


def test_transmit_refuses_lying_headers_and_bad_lengths_one_frame_at_a_time(drv: NetDriver) -> None:
    tap = _tap(drv)
    drv.txq.alloc(0)
    bad = [
        (b"\0" * 11, b""),  # shorter than a header
        (struct.pack("<BB", 0x80, 0) + bytes(10), frame_of(60)),  # a flag a driver may not send
        (struct.pack("<BB", 0, 0x33) + bytes(10), frame_of(60)),  # an unknown GSO type
        (struct.pack("<BB", 0, 0x81) + bytes(10), frame_of(60)),  # ECN without its feature
        (HDR, frame_of(MAX_BUFFER_LEN - 11)),  # one byte too long
    ]
    for header, frame in bad:
        drv.send(frame, header=header, notify=False)
    addr = drv.txq.alloc(64)
    drv.txq.add_chain([(addr, 64, True)])  # a device-writable buffer in a transmit chain
    drv.send(frame_of(60))  # and a good one after them all
    assert tap.take() == HDR + frame_of(60)
    assert [length for _, length in drv.txq.take_used()] == [0] * 7
    m = drv.net.metrics
    assert (m.tx_malformed_frames, m.tx_fails, m.tx_packets_count) == (6, 6, 1)
    assert not drv.transport.status & mmio.STATUS_DEVICE_NEEDS_RESET


def test_offloads_the_driver_accepted_pass_with_their_header() -> None:
    probe = _driver()
    features = probe.net.avail_features & ~(1 << VIRTIO_NET_F_HOST_TSO4)
    probe.close()
    d = _driver(features=features)
    try:
        csum = struct.pack("<BBHHHHH", VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 34, 16, 0)
        tso = struct.pack("<BBHHHHH", VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, 54, 1448, 34, 16, 0)
        d.send(frame_of(100), header=csum)
        d.send(frame_of(3000), header=tso)  # HOST_TSO4 was not accepted
        assert _tap(d).pending() == [csum + frame_of(100)]
        assert d.net.has_feature(VIRTIO_NET_F_CSUM) and d.net.metrics.tx_malformed_frames == 1
        assert d.net.has_feature(VIRTIO_NET_F_GUEST_TSO4)
    finally:
        d.close()


# -- hostile drivers -----------------------------------------------------------------------------
_SIZE = 16
_AREA = 0x40000  # the region hostile descriptors point into (plus addresses outside memory)
_ADDRS = st.one_of(st.integers(0, _AREA - 1).map(lambda a: TX_DATA + a), st.sampled_from([0, MEM - 8, MEM, 1 << 40]))
_LENS = st.one_of(st.integers(0, 2048), st.sampled_from([11, 12, 65562, 65563, 1 << 20, (1 << 32) - 1]))
_RANDOM = st.tuples(_ADDRS, _LENS, st.integers(0, 7), st.integers(0, _SIZE + 2))


def _plausible(write: int) -> st.SearchStrategy[tuple[int, int, int, int]]:
    """A descriptor as a driver would write it, mostly; hostile ones are mixed in by the table."""
    return st.tuples(st.integers(0, _AREA - 4096).map(lambda a: TX_DATA + a), st.integers(0, 4096),
                     st.sampled_from([write, write | VIRTQ_DESC_F_NEXT]), st.integers(0, _SIZE - 1))


def _table(write: int) -> st.SearchStrategy[list[tuple[int, int, int, int]]]:
    one = st.one_of(_plausible(write), _plausible(write), _RANDOM)
    return st.lists(one, min_size=_SIZE, max_size=_SIZE)


_DESCS = _table(0)
_RX_DESCS = _table(VIRTQ_DESC_F_WRITE)
_HEADS = st.lists(st.integers(0, _SIZE + 2), min_size=1, max_size=_SIZE)


def _write_table(d: NetDriver, queue_base: int, descs: list[tuple[int, int, int, int]]) -> None:
    for i, (addr, length, flags, nxt) in enumerate(descs):
        d.mem.write(queue_base + 16 * i, struct.pack("<QIHH", addr, length, flags, nxt))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(descs=_DESCS, heads=_HEADS, noise=st.one_of(st.just(bytes(64)), st.binary(min_size=64, max_size=64)))
def test_hostile_transmit_chains_fail_only_their_frame(descs: list[tuple[int, int, int, int]], heads: list[int],
                                                        noise: bytes) -> None:
    d = _driver(size=_SIZE)
    try:
        for offset in range(0, _AREA, 4096):
            d.mem.write(TX_DATA + offset, noise * 64)  # zeros: headers that ask for nothing
        _write_table(d, d.txq.desc_addr, descs)
        for head in heads:
            d.txq.publish(head)
        d.notify(1)
        used = d.txq.take_used()
        valid = [h for h in heads if h < _SIZE]
        assert sorted(h for h, _ in used) == sorted(valid) and all(length == 0 for _, length in used)
        m = d.net.metrics
        sent = _tap(d).pending()
        event("sent" if sent else "none sent")
        assert len(sent) == m.tx_packets_count
        assert m.tx_malformed_frames + m.tx_packets_count + m.tap_write_fails == len(heads)
        assert all(VNET_HDR_LEN <= len(s) <= MAX_BUFFER_LEN for s in sent)
        assert not d.transport.status & mmio.STATUS_DEVICE_NEEDS_RESET
    finally:
        d.close()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(descs=_RX_DESCS, heads=_HEADS, size=st.integers(0, 9000), mergeable=st.booleans(),
       header=st.binary(min_size=12, max_size=12))
def test_hostile_receive_chains_get_the_frame_or_nothing_and_nothing_else(
        descs: list[tuple[int, int, int, int]], heads: list[int], size: int, mergeable: bool, header: bytes) -> None:
    d = _driver(size=_SIZE)
    if not mergeable:
        wanted = d.net.avail_features & ~(1 << VIRTIO_NET_F_MRG_RXBUF)
        d.close()
        d = _driver(size=_SIZE, features=wanted)
    try:
        rx_area = RX_DATA
        descs = [((a - TX_DATA + rx_area) if TX_DATA <= a < TX_DATA + _AREA else a, n, f, x) for a, n, f, x in descs]
        canary = bytes([0xEE]) * _AREA
        d.mem.write(rx_area, canary)
        _write_table(d, d.rxq.desc_addr, descs)
        for head in heads:
            d.rxq.publish(head)
        frame = frame_of(size, 9)
        _tap(d).inject(frame, header=header)
        d.notify(0)
        used = d.rxq.take_used()
        m = d.net.metrics
        assert {h for h, _ in used} <= set(range(_SIZE))
        written = [(h, n) for h, n in used if n]
        event("delivered" if m.rx_packets_count else "dropped" if m.rx_fails else "waiting")
        if m.rx_packets_count:
            assert sum(n for _, n in written) == VNET_HDR_LEN + size
            ranges: list[tuple[int, int]] = []
            data = b"".join(_gather(d, descs, h, n, ranges) for h, n in written)
            count = len(written) if mergeable else 1
            if not _overlap(ranges):  # buffers a driver made overlap hold the last write, not the frame
                assert data == header[:10] + struct.pack("<H", count) + frame
        else:
            assert written == [] and (m.rx_fails == 1 or m.no_rx_avail_buffer == 1)
        # Nothing outside the writable buffers of the table changed.
        after = bytearray(d.mem.read(rx_area, _AREA))
        for addr, length, flags, _ in descs:
            if flags & VIRTQ_DESC_F_WRITE and not flags & VIRTQ_DESC_F_INDIRECT and rx_area <= addr < rx_area + _AREA:
                end = min(addr + length, rx_area + _AREA)
                after[addr - rx_area : end - rx_area] = canary[: end - addr]
        assert after == canary
    finally:
        d.close()


def _gather(d: NetDriver, descs: list[tuple[int, int, int, int]], head: int, length: int,
            ranges: list[tuple[int, int]]) -> bytes:
    """The first ``length`` bytes of chain ``head``'s buffers (direct chains only); their ranges go to ``ranges``."""
    out = b""
    index, seen = head, 0
    while len(out) < length and seen < _SIZE:
        addr, n, flags, nxt = descs[index]
        take = min(n, length - len(out))
        out += d.mem.read(addr, take)
        ranges.append((addr, addr + take))
        if not flags & VIRTQ_DESC_F_NEXT:
            break
        index, seen = nxt, seen + 1
    return out


def _overlap(ranges: list[tuple[int, int]]) -> bool:
    ordered = sorted(r for r in ranges if r[0] < r[1])
    return any(b[0] < a[1] for a, b in itertools.pairwise(ordered))


# -- rate limiters (the loop runs: timers wake the device) ----------------------------------------
def test_transmit_throttled_by_ops_is_woken_by_its_timer_and_keeps_order() -> None:
    d = _driver(tx_limiter=RateLimiter.from_config(Limits(ops=Bucket(1, 20))))
    try:
        d.start()
        for i in range(3):
            d.send(frame_of(60, i), notify=False)
        d.notify(1)
        tap = _tap(d)
        assert [tap.take() for _ in range(3)] == [HDR + frame_of(60, i) for i in range(3)]
        m = d.net.metrics
        assert m.tx_rate_limiter_throttled >= 2 and m.tx_rate_limiter_event_count >= 2
        wait_for(lambda: len(d.txq.take_used()) == 0 and d.txq.used_idx() == 3, "all three to be used")
    finally:
        d.close()


def test_receive_throttled_by_bandwidth_stops_reading_and_resumes_on_its_timer() -> None:
    d = _driver(rx_limiter=RateLimiter.from_config(Limits(bandwidth=Bucket(200, 20))))
    try:
        d.start()
        d.post_rx(8, 1526)
        for i in range(3):
            _tap(d).inject(frame_of(150, i))
        got: list[bytes] = []

        def three() -> bool:
            got.extend(f for _, _, f in d.on_loop(d.frames))
            return len(got) == 3

        wait_for(three, "three frames")
        assert got == [frame_of(150, i) for i in range(3)]
        m = d.net.metrics
        assert m.rx_rate_limiter_throttled >= 2 and m.rx_event_rate_limiter_count >= 2
    finally:
        d.close()


def test_a_patch_replaces_the_buckets_live_and_an_oversized_frame_still_goes() -> None:
    hour = 3_600_000
    d = _driver(tx_limiter=RateLimiter.from_config(Limits(bandwidth=Bucket(100, hour))))
    try:
        d.start()
        d.send(frame_of(1000, 1), notify=False)  # larger than the whole bucket: goes, on credit
        d.send(frame_of(60, 2))  # then nothing for an hour
        tap = _tap(d)
        assert tap.take() == HDR + frame_of(1000, 1)
        wait_for(lambda: d.net.metrics.tx_rate_limiter_throttled >= 1, "the second frame to be throttled")
        assert tap.pending() == []
        d.net.update_rate_limiters(None, Limits(bandwidth=Bucket(0, 0)))  # PATCH: no limit
        assert tap.take() == HDR + frame_of(60, 2)
        d.net.update_rate_limiters(Limits(ops=Bucket(1, hour)), None)
        d.post_rx(4, 1526)
        for i in range(2):
            tap.inject(frame_of(80, i))
        wait_for(lambda: d.net.metrics.rx_rate_limiter_throttled >= 1, "receive to be throttled")
        assert [f for _, _, f in d.on_loop(d.frames)] == [frame_of(80, 0)]
    finally:
        d.close()


# -- snapshots, metrics --------------------------------------------------------------------------
def test_state_round_trip_resumes_both_directions(drv: NetDriver) -> None:
    drv.send(frame_of(60))
    _tap(drv).take()
    net_state, transport_state = drv.net.save_state(), drv.transport.save_state()
    assert net_state == NetState("eth0", "pair0", GUEST_MAC, True, drv.net.acked_features)
    mem = copy_memory(drv.mem)
    restored = Net("eth0", PairTap(), drv.loop, guest_mac=GUEST_MAC)
    restored.restore_state(from_dict(NetState, to_dict(net_state)))
    transport = mmio.MmioTransport(mem, restored, drv.irq)
    transport.restore_state(transport_state)
    try:
        assert restored.activated and transport.save_state() == transport_state
        tap = restored.tap
        assert isinstance(tap, PairTap)
        data = HDR + frame_of(70, 4)
        addr = 0x1800000
        mem.write(addr, data)
        drv.txq.mem = mem
        drv.txq.add_chain([(addr, len(data), False)])
        transport.notify(1)
        assert tap.take() == data
    finally:
        restored.close()
        mem.close()


def test_restore_refuses_another_interface_or_features_never_offered(drv: NetDriver) -> None:
    state = drv.net.save_state()
    for other, words in ((Net("eth1", PairTap(), drv.loop, guest_mac=GUEST_MAC), "is not"),
                         (Net("eth0", PairTap(), drv.loop), "guest_mac")):
        with pytest.raises(RecordError, match=words):
            other.restore_state(state)
        other.close()
    same = Net("eth0", PairTap(), drv.loop, guest_mac=GUEST_MAC)
    with pytest.raises(RecordError, match="never offered"):
        same.restore_state(from_dict(NetState, to_dict(state) | {"acked_features": 1 << 60}))
    same.close()


def test_metrics_are_summed_as_net_and_kept_per_interface() -> None:
    a, b = _driver(), _driver()
    b.net.iface_id = "eth1"
    try:
        registry = DeviceRegistry()
        for n, d in enumerate((a, b)):
            registry.add(DeviceEntry("net", d.net.iface_id, d.net, Slot(BusKind.MMIO, ((0xD0000000 + n * 0x1000,
                                                                                          0x1000),))))
        metrics = Metrics()
        metrics.add_source(lambda: fold_device_metrics(registry, metrics))
        a.send(frame_of(60))
        b.send(frame_of(100))
        b.send(frame_of(100))
        totals = metrics.totals()
        assert totals["net"]["tx_packets_count"] == 3 and totals["net"]["tx_bytes_count"] == 260
        assert totals["net_eth0"]["tx_packets_count"] == 1 and totals["net_eth1"]["tx_bytes_count"] == 200
        assert metrics.deltas()["net_eth1"]["tx_count"] == 2
    finally:
        a.close()
        b.close()


def test_close_is_idempotent_and_the_fd_is_gone(drv: NetDriver) -> None:
    fd = drv.net.tap.fd
    drv.net.close()
    drv.net.close()
    with pytest.raises(OSError):
        os.fstat(fd)
