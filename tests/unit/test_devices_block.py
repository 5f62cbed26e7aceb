"""virtio-blk over a real image file, through the mmio transport and a test driver."""

from __future__ import annotations

import fcntl
import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firelet.devices.interrupt import CountingInterrupt
from firelet.devices.virtio import mmio
from firelet.devices.virtio.block import Block, BlockError
from firelet.devices.virtio.block.device import SEG_MAX, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO
from firelet.devices.virtio.block.request import (
    VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
)

from virtio_utils import MEM_SIZE, DriverQueue, mmio_init, mmio_read32, new_memory

SECTORS = 64
TAIL = 100  # bytes past the last whole sector: not part of the disk, must stay untouched
STATUS_UNSET = 0xEE


def _image(path: Path) -> Path:
    path.write_bytes(bytes((i * 7 + 3) & 0xFF for i in range(SECTORS * 512 + TAIL)))
    return path


class Rig:
    """A block device behind virtio-mmio, initialised as Linux would."""

    def __init__(self, tmp_path: Path, *, read_only: bool = False, features: int | None = None) -> None:
        self.path = _image(tmp_path / "disk.img")
        self.original = self.path.read_bytes()
        self.mem = new_memory()
        self.block = Block(self.path, read_only=read_only, drive_id="root-drive")
        self.irq = CountingInterrupt()
        self.transport = mmio.MmioTransport(self.mem, self.block, self.irq)
        self.drv = DriverQueue(self.mem, size=64)
        status = mmio_init(self.transport, [self.drv], features)
        assert status & mmio.STATUS_DRIVER_OK and not status & mmio.STATUS_DEVICE_NEEDS_RESET

    def request(self, req_type: int, sector: int, data: bytes = b"", in_len: int = 0, *,
                indirect: bool = False, split_header: bool = False) -> tuple[int, int, bytes]:
        """Submit one request; returns (status, used length, bytes the device wrote)."""
        header = struct.pack("<IIQ", req_type, 0, sector)
        hdr = self.drv.alloc(16, header)
        bufs = [(hdr, 8, False), (hdr + 8, 8, False)] if split_header else [(hdr, 16, False)]
        if data:
            bufs.append((self.drv.alloc(len(data), data), len(data), False))
        data_in = self.drv.alloc(in_len) if in_len else 0
        if in_len:
            bufs.append((data_in, in_len, True))
        status = self.drv.alloc(1, bytes([STATUS_UNSET]))
        bufs.append((status, 1, True))
        head = (self.drv.add_indirect_chain if indirect else self.drv.add_chain)(bufs)
        self.transport.notify(0)
        ((used_head, used_len),) = self.drv.take_used()
        assert used_head == head
        return self.mem.read_u8(status), used_len, self.mem.read(data_in, in_len) if in_len else b""

    def close(self) -> None:
        self.block.close()
        self.mem.close()


@pytest.fixture
def rig(tmp_path: Path):
    r = Rig(tmp_path)
    yield r
    r.close()


def test_config_space_and_features(rig: Rig) -> None:
    config = bytearray(16)
    rig.transport.read(mmio.CONFIG, memoryview(config))
    capacity, size_max, seg_max = struct.unpack("<QII", config)
    assert (capacity, size_max, seg_max) == (SECTORS, 0, SEG_MAX)
    assert mmio_read32(rig.transport, mmio.DEVICE_ID) == 2
    assert rig.block.has_feature(VIRTIO_BLK_F_FLUSH) and not rig.block.has_feature(VIRTIO_BLK_F_RO)


def test_write_then_read_back(rig: Rig) -> None:
    payload = os.urandom(3 * 512)
    assert rig.request(VIRTIO_BLK_T_OUT, 5, payload)[:2] == (VIRTIO_BLK_S_OK, 1)
    status, used, got = rig.request(VIRTIO_BLK_T_IN, 5, in_len=3 * 512)
    assert (status, used, got) == (VIRTIO_BLK_S_OK, 3 * 512 + 1, payload)
    on_disk = rig.path.read_bytes()
    assert on_disk[5 * 512 : 8 * 512] == payload
    assert on_disk[: 5 * 512] == rig.original[: 5 * 512] and on_disk[8 * 512 :] == rig.original[8 * 512 :]
    m = rig.block.metrics
    assert (m.write_ops, m.write_bytes, m.read_ops, m.read_bytes, m.failures) == (1, 1536, 1, 1536, 0)
    assert rig.irq.count >= 1


def test_read_last_sector_and_split_header_and_indirect(rig: Rig) -> None:
    expected = rig.original[(SECTORS - 1) * 512 : SECTORS * 512]
    assert rig.request(VIRTIO_BLK_T_IN, SECTORS - 1, in_len=512, split_header=True)[2] == expected
    assert rig.request(VIRTIO_BLK_T_IN, SECTORS - 1, in_len=512, indirect=True)[2] == expected


def test_status_in_same_descriptor_as_data(rig: Rig) -> None:
    hdr = rig.drv.alloc(16, struct.pack("<IIQ", VIRTIO_BLK_T_IN, 0, 2))
    buf = rig.drv.alloc(513, bytes(513))
    rig.drv.add_chain([(hdr, 16, False), (buf, 513, True)])
    rig.transport.notify(0)
    assert rig.drv.take_used()[0][1] == 513
    assert rig.mem.read(buf, 512) == rig.original[1024:1536]
    assert rig.mem.read_u8(buf + 512) == VIRTIO_BLK_S_OK


def test_flush_syncs(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    monkeypatch.setattr(os, "fdatasync", synced.append)
    assert rig.request(VIRTIO_BLK_T_FLUSH, 0)[:2] == (VIRTIO_BLK_S_OK, 1)
    assert len(synced) == 1 and rig.block.metrics.flush_ops == 1
    rig.request(VIRTIO_BLK_T_OUT, 0, bytes(512))
    assert len(synced) == 1  # FLUSH negotiated: writes are not synced one by one


def test_write_through_without_flush_feature(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    probe = Block(_image(tmp_path / "p.img"))
    features = probe.avail_features & ~(1 << VIRTIO_BLK_F_FLUSH)
    probe.close()
    r = Rig(tmp_path, features=features)
    synced: list[int] = []
    monkeypatch.setattr(os, "fdatasync", synced.append)
    try:
        assert r.request(VIRTIO_BLK_T_OUT, 0, bytes(512))[0] == VIRTIO_BLK_S_OK
        assert len(synced) == 1
    finally:
        r.close()


def test_close_flushes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    block = Block(_image(tmp_path / "d.img"))
    synced: list[int] = []
    monkeypatch.setattr(os, "fdatasync", synced.append)
    block.close()
    block.close()
    assert len(synced) == 1


def test_get_id(rig: Rig) -> None:
    status, used, ident = rig.request(VIRTIO_BLK_T_GET_ID, 0, in_len=20)
    assert (status, used, ident) == (VIRTIO_BLK_S_OK, 21, b"root-drive" + bytes(10))
    status, used, ident = rig.request(VIRTIO_BLK_T_GET_ID, 0, in_len=4)
    assert (status, used, ident) == (VIRTIO_BLK_S_OK, 5, b"root")


def test_read_only_refuses_writes(tmp_path: Path) -> None:
    r = Rig(tmp_path, read_only=True)
    try:
        assert r.block.has_feature(VIRTIO_BLK_F_RO)
        assert r.request(VIRTIO_BLK_T_OUT, 0, b"\xff" * 512)[:2] == (VIRTIO_BLK_S_IOERR, 1)
        assert r.request(VIRTIO_BLK_T_IN, 0, in_len=512)[2] == r.original[:512]
        assert r.block.metrics.failures == 1
    finally:
        r.close()
    assert r.path.read_bytes() == r.original


@pytest.mark.parametrize("sector,nbytes", [(SECTORS, 512), (SECTORS - 1, 1024), (2**64 - 1, 512), (0, 511), (0, 100)])
def test_out_of_range_or_partial_sector(rig: Rig, sector: int, nbytes: int) -> None:
    assert rig.request(VIRTIO_BLK_T_OUT, sector, b"\x55" * nbytes)[:2] == (VIRTIO_BLK_S_IOERR, 1)
    assert rig.request(VIRTIO_BLK_T_IN, sector, in_len=nbytes)[:2] == (VIRTIO_BLK_S_IOERR, 1)
    assert rig.path.read_bytes() == rig.original


def test_unsupported_type(rig: Rig) -> None:
    assert rig.request(11, 0, in_len=16)[:2] == (VIRTIO_BLK_S_UNSUPP, 1)


def test_data_in_the_wrong_direction_is_an_error(rig: Rig) -> None:
    # OUT whose payload is device-writable, IN whose buffer is device-readable.
    assert rig.request(VIRTIO_BLK_T_OUT, 0, in_len=512)[:2] == (VIRTIO_BLK_S_IOERR, 1)
    assert rig.request(VIRTIO_BLK_T_IN, 0, b"\x01" * 512)[:2] == (VIRTIO_BLK_S_IOERR, 1)
    assert rig.path.read_bytes() == rig.original


def test_too_many_segments(rig: Rig) -> None:
    drv = rig.drv
    hdr = drv.alloc(16, struct.pack("<IIQ", VIRTIO_BLK_T_IN, 0, 0))
    bufs = [(hdr, 16, False)] + [(drv.alloc(512), 512, True) for _ in range(SEG_MAX + 1)]
    status = drv.alloc(1)
    bufs.append((status, 1, True))
    rig.block.queues[0].indirect = True
    drv.add_indirect_chain(bufs)
    rig.transport.notify(0)
    assert drv.take_used()[0][1] == 1
    assert rig.mem.read_u8(status) == VIRTIO_BLK_S_IOERR


def test_short_header_and_missing_status_are_dropped(rig: Rig) -> None:
    drv = rig.drv
    status = drv.alloc(1, bytes([STATUS_UNSET]))
    drv.add_chain([(drv.alloc(8), 8, False), (status, 1, True)])
    drv.add_chain([(drv.alloc(16, struct.pack("<IIQ", VIRTIO_BLK_T_FLUSH, 0, 0)), 16, False)])
    drv.add_chain([(drv.alloc(16), 16, False), (drv.alloc(8), 0, True)])
    rig.transport.notify(0)
    assert [used for _, used in drv.take_used()] == [0, 0, 0]
    assert rig.mem.read_u8(status) == STATUS_UNSET
    assert rig.block.metrics.dropped == 3


def test_malformed_chain_is_returned_with_zero_length(rig: Rig) -> None:
    drv = rig.drv
    drv.add_chain([(drv.alloc(16), 16, False), (MEM_SIZE - 1, 2, True)])
    rig.transport.notify(0)
    assert [used for _, used in drv.take_used()] == [0]


def test_update_backing_file(rig: Rig, tmp_path: Path) -> None:
    bigger = tmp_path / "bigger.img"
    bigger.write_bytes(b"\x42" * (2 * SECTORS * 512))
    generation = mmio_read32(rig.transport, mmio.CONFIG_GENERATION)
    rig.block.update_backing_file(bigger)
    assert rig.block.capacity == 2 * SECTORS
    assert mmio_read32(rig.transport, mmio.CONFIG_GENERATION) == generation + 1
    assert mmio_read32(rig.transport, mmio.INTERRUPT_STATUS) & mmio.VIRTIO_MMIO_INT_CONFIG
    assert rig.request(VIRTIO_BLK_T_IN, 2 * SECTORS - 1, in_len=512)[2] == b"\x42" * 512
    with pytest.raises(BlockError, match="cannot open drive image"):
        rig.block.update_backing_file(tmp_path / "missing.img")
    assert rig.block.capacity == 2 * SECTORS


def test_missing_image_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(BlockError, match="check the path"):
        Block(tmp_path / "nope.img")
    with pytest.raises(BlockError, match="not a regular file"):
        Block(tmp_path, read_only=True)


def test_read_only_image_opened_read_only(tmp_path: Path) -> None:
    path = _image(tmp_path / "ro.img")
    path.chmod(0o444)
    block = Block(path, read_only=True)
    try:
        assert fcntl.fcntl(block._fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
    finally:
        block.close()


# -- hostile drivers ---------------------------------------------------------------------
_DATA = 0x100000
_CANARY = 0x180000  # guest memory no descriptor points at
_CANARY_LEN = 0x1000

_BAD_ADDRS = (MEM_SIZE - 1, MEM_SIZE, 2**64 - 16, 2**63)
_HOSTILE_LENS = (0, 1, 15, 511, 513, 0xFFFFFFFF, 0x8000_0000)


@st.composite
def _hostile_request(draw: st.DrawFn) -> tuple[list[tuple[int, int, bool]], int]:
    """A well-formed request near the disk's edges, then up to three hostile mutations.

    Returns the segments (header first, status last) and the request type.
    """
    req_type = draw(st.sampled_from([VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH,
                                     VIRTIO_BLK_T_GET_ID, 11, 0xFFFFFFFF]))
    lens = draw(st.lists(st.sampled_from([512, 1024, 4096]), max_size=4))
    sectors = sum(lens) // 512
    sector = draw(st.sampled_from([0, SECTORS - sectors, SECTORS - sectors + 1, 2**63, 2**64 - 1])
                  | st.integers(0, SECTORS))
    data_write = req_type != VIRTIO_BLK_T_OUT
    segments = [(_DATA, 16, False)]
    for length in lens:
        segments.append((draw(st.integers(_DATA + 0x100, _DATA + 0x8000)), length, data_write))
    segments.append((_DATA + 0x9000, 1, True))
    for index, what, value in draw(st.lists(st.tuples(st.integers(0, 6), st.sampled_from(
            ["len", "addr", "write", "drop"]), st.integers(0, 2**32 - 1)), max_size=3)):
        if not segments:
            break
        index %= len(segments)
        addr, length, write = segments[index]
        if what == "len":
            segments[index] = (addr, _HOSTILE_LENS[value % len(_HOSTILE_LENS)], write)
        elif what == "addr":
            segments[index] = (_BAD_ADDRS[value % len(_BAD_ADDRS)], length, write)
        elif what == "write":
            segments[index] = (addr, length, not write)
        else:
            del segments[index]
    header = struct.pack("<IIQ", req_type, 0, sector % 2**64)
    return segments, header


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=_hostile_request(), indirect=st.booleans(),
       corruption=st.none() | st.tuples(st.integers(0, 63), st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1),
                                        st.integers(0, 7), st.integers(0, 0xFFFF)),
       bad_head=st.sampled_from([False] * 9 + [True]))
def test_hostile_chains_never_raise_or_escape(rig: Rig, request, indirect: bool, corruption, bad_head: bool) -> None:
    """Whatever the driver sends: no exception, no write outside the disk or the chain's buffers."""
    segments, header = request
    mem, drv = rig.mem, rig.drv
    mem.write(_CANARY, b"\xc5" * _CANARY_LEN)
    mem.write(_DATA, header)
    rig.block.queues[0].indirect = True  # the device offers it; pretend the driver took it
    if not segments:
        return
    head = (drv.add_indirect_chain if indirect else drv.add_chain)(segments, publish=False)
    if corruption is not None:
        drv.write_desc(*corruption)
    drv.publish(64 + head if bad_head else head)  # now and then a head past the queue size
    rig.transport.notify(0)
    writable_total = sum(length for _, length, write in segments if write)
    for used_head, used in drv.take_used():
        assert used_head == head
        if corruption is None:
            assert used <= writable_total
    if corruption is None or corruption[1] >= MEM_SIZE:
        assert mem.read(_CANARY, _CANARY_LEN) == b"\xc5" * _CANARY_LEN
    assert os.path.getsize(rig.path) == SECTORS * 512 + TAIL
    with open(rig.path, "rb") as f:
        f.seek(SECTORS * 512)
        assert f.read() == rig.original[SECTORS * 512 :]
    assert not mmio_read32(rig.transport, mmio.STATUS) & mmio.STATUS_DEVICE_NEEDS_RESET
