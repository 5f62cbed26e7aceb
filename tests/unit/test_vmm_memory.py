"""Guest RAM: bounds-checked views, the MMIO gap, 2 MiB-aligned huge-page backing."""

from __future__ import annotations

import ctypes

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firelet.arch.x86_64 import layout
from firelet.arch.x86_64.ram import guest_ram
from firelet.memory.guest import HUGE_PAGE_SIZE, GuestMemoryError

MiB = layout.MiB


def test_thp_backed_ram_starts_on_a_2mib_boundary_and_behaves_like_plain_ram() -> None:
    mem = guest_ram(64 * MiB, transparent_huge_pages=True)
    try:
        (region,) = mem.regions
        assert region.host_addr % HUGE_PAGE_SIZE == 0
        assert region.size == 64 * MiB and mem.size == 64 * MiB
        mem.write(64 * MiB - 4, b"tail")
        assert mem.read(64 * MiB - 4, 4) == b"tail"
        # the view is the aligned part of the mapping: the host address of guest 0 is host_addr
        view = mem.view(0, 8)
        view[:] = b"firelet!"
        assert ctypes.string_at(region.host_addr, 8) == b"firelet!"
        view.release()
        with pytest.raises(GuestMemoryError):
            mem.view(64 * MiB - 2, 4)
    finally:
        mem.close()


def test_ram_above_the_mmio_gap_is_a_second_region() -> None:
    size = layout.MMIO_GAP_START + 2 * MiB
    mem = guest_ram(size, transparent_huge_pages=True)
    try:
        low, high = mem.regions
        assert (low.guest_addr, low.end) == (0, layout.MMIO_GAP_START)
        assert (high.guest_addr, high.size) == (layout.MMIO_GAP_END, 2 * MiB)
        assert all(r.host_addr % HUGE_PAGE_SIZE == 0 for r in mem.regions)
        assert not mem.check_range(layout.MMIO_GAP_START, 1)
        assert mem.check_range(layout.MMIO_GAP_END, 2 * MiB)
        assert mem.last_addr == layout.MMIO_GAP_END + 2 * MiB
    finally:
        mem.close()


@given(addr=st.integers(-2**64, 2**65), length=st.integers(-16, 2**33))
def test_any_range_is_either_wholly_inside_ram_or_refused(addr: int, length: int) -> None:
    mem = _SMALL
    inside = addr >= 0 and length >= 0 and addr + length <= mem.size
    assert mem.check_range(addr, length) == inside
    if inside and length <= 4096:
        assert len(mem.view(addr, length)) == length
    elif not inside:
        with pytest.raises(GuestMemoryError):
            mem.view(addr, length)


_SMALL = guest_ram(4 * MiB, transparent_huge_pages=True)
