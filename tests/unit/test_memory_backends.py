"""Guest memory backends: anonymous, memfd and file, discard, and writing RAM out."""

from __future__ import annotations

import errno
import io
import itertools
import mmap
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firelet.memory.guest import PAGE_SIZE, GuestMemory, GuestMemoryError

from concurrent_reader import watch_while_writing

PAGES = 16
SIZE = PAGES * PAGE_SIZE
#: Two regions with a gap, as RAM around the MMIO gap is (scaled down).
TWO = [(0, 4 * PAGE_SIZE), (8 * PAGE_SIZE, 4 * PAGE_SIZE)]


def _fill(mem: GuestMemory) -> bytes:
    """Write a distinct byte per page (page n holds n+1) and return what RAM now holds."""
    for region in mem.regions:
        for addr in range(region.guest_addr, region.end, PAGE_SIZE):
            mem.write(addr, bytes([addr // PAGE_SIZE + 1]) * PAGE_SIZE)
    return b"".join(mem.read(r.guest_addr, r.size) for r in mem.regions)


def test_memfd_holds_all_regions_back_to_back_with_its_size_sealed() -> None:
    mem = GuestMemory.memfd(TWO)
    try:
        assert mem.backend == "memfd" and mem.fd >= 0
        assert [(r.fd_offset, r.shared) for r in mem.regions] == [(0, True), (4 * PAGE_SIZE, True)]
        content = _fill(mem)
        assert os.pread(mem.fd, 8 * PAGE_SIZE, 0) == content  # the fd is all of RAM
        with pytest.raises(OSError) as grow:
            os.ftruncate(mem.fd, 16 * PAGE_SIZE)
        assert grow.value.errno == errno.EPERM
        # Another mapping of the fd (what a second process would make) sees the guest's writes.
        other = mmap.mmap(mem.fd, 8 * PAGE_SIZE, flags=mmap.MAP_SHARED)
        mem.write(8 * PAGE_SIZE + 5, b"seen")
        assert other[4 * PAGE_SIZE + 5 : 4 * PAGE_SIZE + 9] == b"seen"
        other.close()
    finally:
        mem.close()


def test_close_releases_the_memfd_once() -> None:
    mem = GuestMemory.memfd(TWO)
    fd = mem.fd
    mem.close()
    mem.close()  # idempotent
    with pytest.raises(OSError):
        os.fstat(fd)


def test_discard_on_memfd_punches_a_hole_that_every_mapping_sees() -> None:
    mem = GuestMemory.memfd([(0, SIZE)])
    try:
        _fill(mem)
        blocks_before = os.fstat(mem.fd).st_blocks
        mem.discard(2 * PAGE_SIZE, 3 * PAGE_SIZE)
        # The host got the memory back (checked first: a read through the mapping allocates again).
        assert os.fstat(mem.fd).st_blocks == blocks_before - 3 * PAGE_SIZE // 512
        assert os.pread(mem.fd, 3 * PAGE_SIZE, 2 * PAGE_SIZE) == bytes(3 * PAGE_SIZE)
        assert mem.read(2 * PAGE_SIZE, 3 * PAGE_SIZE) == bytes(3 * PAGE_SIZE)
        assert mem.read(PAGE_SIZE, PAGE_SIZE) == b"\x02" * PAGE_SIZE  # neighbours untouched
        assert mem.read(5 * PAGE_SIZE, 1) == b"\x06"
    finally:
        mem.close()


def test_discard_on_anonymous_memory_zeroes_and_frees_the_pages() -> None:
    mem = GuestMemory.anonymous([(0, SIZE)])
    try:
        _fill(mem)
        mem.discard(PAGE_SIZE, PAGE_SIZE)
        resident = bytearray(PAGES)
        assert _mincore(mem.regions[0].host_addr, SIZE, resident) == 0  # before a read maps the zero page
        assert resident[1] & 1 == 0 and resident[0] & 1 == 1
        assert mem.read(PAGE_SIZE, PAGE_SIZE) == bytes(PAGE_SIZE)
        assert mem.read(0, 1) == b"\x01" and mem.read(2 * PAGE_SIZE, 1) == b"\x03"
    finally:
        mem.close()


def _mincore(addr: int, length: int, out: bytearray) -> int:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    buf = (ctypes.c_ubyte * len(out)).from_buffer(out)
    return libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(length), buf)


@pytest.mark.parametrize(
    ("addr", "length", "why"),
    [
        (1, PAGE_SIZE, "not aligned"),
        (0, PAGE_SIZE + 1, "not aligned"),
        (SIZE - PAGE_SIZE, 2 * PAGE_SIZE, "runs past the end"),
        (SIZE, PAGE_SIZE, "not in guest RAM"),
        (-PAGE_SIZE, PAGE_SIZE, "bad guest range"),
    ],
)
def test_discard_refuses_ranges_outside_ram_or_off_page(addr: int, length: int, why: str) -> None:
    mem = GuestMemory.memfd([(0, SIZE)])
    try:
        mem.write(0, b"keep")
        with pytest.raises(GuestMemoryError, match=why):
            mem.discard(addr, length)
        assert mem.read(0, 4) == b"keep"
    finally:
        mem.close()


_DISCARD = st.tuples(st.integers(-2, PAGES + 2), st.integers(-1, PAGES + 2), st.booleans())


@settings(max_examples=60, deadline=None)
@given(backend=st.sampled_from(["anonymous", "memfd"]), ops=st.lists(_DISCARD, max_size=6))
def test_discard_zeroes_exactly_the_accepted_ranges(backend: str, ops: list[tuple[int, int, bool]]) -> None:
    mem = GuestMemory.anonymous(TWO) if backend == "anonymous" else GuestMemory.memfd(TWO)
    try:
        expected = {n: n + 1 for r in mem.regions for n in range(r.guest_addr // PAGE_SIZE, r.end // PAGE_SIZE)}
        _fill(mem)
        for page, count, misalign in ops:
            addr, length = page * PAGE_SIZE + (512 if misalign else 0), count * PAGE_SIZE
            inside = length >= 0 and all(n in expected for n in range(page, page + count)) and (
                mem.check_range(addr, length))
            try:
                mem.discard(addr, length)
            except GuestMemoryError:
                assert misalign or not inside
                continue
            assert not misalign and inside
            for n in range(page, page + count):
                expected[n] = 0
        for n, value in expected.items():
            assert mem.read(n * PAGE_SIZE, PAGE_SIZE) == bytes([value]) * PAGE_SIZE
    finally:
        mem.close()


def test_private_file_memory_starts_from_the_file_and_keeps_the_guest_writes_to_itself(tmp_path: Path) -> None:
    path = tmp_path / "mem"
    source = GuestMemory.anonymous(TWO)
    content = _fill(source)
    with path.open("wb") as out:
        assert source.write_to(out) == len(content)
    source.close()
    mem = GuestMemory.from_file(path, TWO)
    try:
        assert mem.backend == "file" and not mem.regions[0].shared
        assert b"".join(mem.read(r.guest_addr, r.size) for r in mem.regions) == content
        mem.write(8 * PAGE_SIZE, b"guest")
        assert path.read_bytes() == content  # copy-on-write: the file is untouched
        mem.discard(8 * PAGE_SIZE, PAGE_SIZE)  # a private page discarded reads the file again
        assert mem.read(8 * PAGE_SIZE, PAGE_SIZE) == content[4 * PAGE_SIZE : 5 * PAGE_SIZE]
    finally:
        mem.close()


def test_shared_file_memory_writes_through_and_discard_punches_the_file(tmp_path: Path) -> None:
    path = tmp_path / "mem"
    mem = GuestMemory.from_file(path, TWO, shared=True, create=True)
    try:
        assert path.stat().st_size == 8 * PAGE_SIZE
        content = _fill(mem)
        mem.regions[0].mapping.flush()
        mem.regions[1].mapping.flush()
        assert path.read_bytes() == content
        mem.discard(9 * PAGE_SIZE, PAGE_SIZE)
        assert path.read_bytes()[5 * PAGE_SIZE : 6 * PAGE_SIZE] == bytes(PAGE_SIZE)
        assert mem.read(9 * PAGE_SIZE, PAGE_SIZE) == bytes(PAGE_SIZE)
    finally:
        mem.close()
    with pytest.raises(GuestMemoryError, match=r"cannot open guest memory file .*exists"):
        GuestMemory.from_file(path, TWO, shared=True, create=True)


def test_a_memory_file_too_small_for_the_guest_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "short"
    path.write_bytes(bytes(PAGE_SIZE))
    with pytest.raises(GuestMemoryError, match=r"has 4096 bytes but the guest needs 32768") as exc:
        GuestMemory.from_file(path, TWO)
    assert "\n" not in str(exc.value)
    with pytest.raises(GuestMemoryError, match="cannot open guest memory file"):
        GuestMemory.from_file(tmp_path / "missing", TWO)


def test_write_to_then_memfd_copy_round_trips_ram() -> None:
    source = GuestMemory.anonymous(TWO, transparent_huge_pages=True)
    copy = GuestMemory.memfd(TWO)
    try:
        content = _fill(source)
        buf = io.BytesIO()
        source.write_to(buf)
        os.pwrite(copy.fd, buf.getvalue(), 0)
        assert b"".join(copy.read(r.guest_addr, r.size) for r in copy.regions) == content
    finally:
        source.close()
        copy.close()


@pytest.mark.parametrize("bits", [16, 32, 64])
def test_an_integer_write_is_one_store_a_vcpu_reading_meanwhile_sees_old_or_new(bits: int) -> None:
    """A ring index crossing a carry (0x00FF -> 0x0100): a reader on another core sees one of the
    two values, never a zeroed or half-written one (virtqueue indices depend on it)."""
    mem = GuestMemory.memfd([(0, PAGE_SIZE)])
    try:
        write, read = getattr(mem, f"write_u{bits}"), getattr(mem, f"read_u{bits}")
        low, high = (1 << bits // 2) - 1, 1 << bits // 2
        values = itertools.cycle((high, low))
        write(0x100, low)
        reads, bad = watch_while_writing(
            lambda: read(0x100), lambda _prev, value: value in (low, high), lambda: write(0x100, next(values)), 0.5
        )
        assert reads > 10_000 and bad == [], [f"{a:#x} -> {b:#x}" for a, b in bad]
        assert read(0x100) in (low, high)
    finally:
        mem.close()
