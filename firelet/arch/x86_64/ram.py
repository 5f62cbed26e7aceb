"""Guest RAM laid out for x86-64: below the 32-bit MMIO gap, and the rest above 4 GiB."""

from __future__ import annotations

from firelet.arch.x86_64 import layout
from firelet.memory.guest import GuestMemory


def guest_ram(mem_size: int, *, huge_pages: bool = False, transparent_huge_pages: bool = False) -> GuestMemory:
    """Anonymous guest RAM of ``mem_size`` bytes in :func:`layout.ram_regions`' ranges."""
    return GuestMemory.anonymous(layout.ram_regions(mem_size), huge_pages=huge_pages,
                                 transparent_huge_pages=transparent_huge_pages)
