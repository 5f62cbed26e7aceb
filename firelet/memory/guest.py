"""Guest RAM: anonymous host mappings, reached only through bounds-checked views.

All guest-physical accesses in firelet (the loader, boot structures, virtqueues,
device I/O) go through :class:`GuestMemory`, so a hostile or wrong guest address
is a :class:`GuestMemoryError` in exactly one place, never a host crash or a
read of host memory.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from firelet.errors import FireletError
from firelet.arch.x86_64 import layout

HUGE_PAGE_SIZE = 2 * layout.MiB
_MAP_HUGETLB = 0x40000  # linux/mman.h
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)


class GuestMemoryError(FireletError):
    """A guest-physical range that is not (wholly) inside guest RAM."""


def _huge_page_shortage(size: int, exc: OSError) -> str:
    """Why ``size`` bytes of 2 MiB huge pages could not be had, and what to reserve (proc(5), meminfo)."""
    need = -(-size // HUGE_PAGE_SIZE)
    info: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                key, _, value = line.partition(":")
                if key.startswith("HugePages_") or key == "Hugepagesize":
                    info[key] = int(value.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    if info.get("Hugepagesize", 2048) != HUGE_PAGE_SIZE // 1024:
        return (f"cannot map {size >> 20} MiB of guest memory in 2 MiB huge pages: the host's default huge "
                f"page size is {info['Hugepagesize']} kB; use huge_pages \"None\" or \"Transparent\"")
    total = info.get("HugePages_Total", 0)
    free = max(0, info.get("HugePages_Free", 0) - info.get("HugePages_Rsvd", 0))
    if "HugePages_Total" not in info or free >= need:  # not a short pool: say what the kernel said
        return f"cannot map {size >> 20} MiB of guest memory in 2 MiB huge pages: {exc.strerror}"
    return (f"guest memory needs {need} 2 MiB huge pages and the host has {free} free; reserve them "
            f"(as root): echo {total + need - free} > /proc/sys/vm/nr_hugepages, or use huge_pages \"None\"")


class MemoryRegion(NamedTuple):
    """One contiguous stretch of guest RAM backed by one host mapping."""

    guest_addr: int
    size: int
    mapping: mmap.mmap
    offset: int = 0  # where guest RAM starts inside ``mapping`` (aligned for huge pages)

    @property
    def end(self) -> int:
        return self.guest_addr + self.size

    @property
    def host_addr(self) -> int:
        """The host virtual address of guest RAM (for KVM_SET_USER_MEMORY_REGION)."""
        return ctypes.addressof(ctypes.c_char.from_buffer(self.mapping)) + self.offset


class GuestMemory:
    """Guest RAM made of non-overlapping regions, sorted by guest address."""

    def __init__(self, regions: Sequence[MemoryRegion]) -> None:
        self.regions: tuple[MemoryRegion, ...] = tuple(sorted(regions, key=lambda r: r.guest_addr))
        for prev, cur in zip(self.regions, self.regions[1:]):
            if cur.guest_addr < prev.end:
                raise ValueError("guest memory regions overlap")
        self._views = [memoryview(r.mapping)[r.offset : r.offset + r.size] for r in self.regions]

    @classmethod
    def anonymous(cls, ranges: Iterable[tuple[int, int]], *, huge_pages: bool = False,
                  transparent_huge_pages: bool = False) -> GuestMemory:
        """Map fresh zeroed memory for each ``(guest_addr, size)``; pages are committed on first touch.

        ``huge_pages`` backs RAM with hugetlbfs 2 MiB pages (Firecracker's
        ``huge_pages: "2M"``, needs ``vm.nr_hugepages``). ``transparent_huge_pages``
        aligns each region to 2 MiB and asks the kernel for THP there, as QEMU
        does: fewer, larger nested-paging entries, at the cost of RSS growing in
        2 MiB steps.
        """
        # hugetlbfs pages come from a pool the host reserves beforehand; mapped with
        # MAP_NORESERVE, a short pool would surface only later, as EFAULT or SIGBUS at the
        # first touch, so those mappings claim their pages up front and fail here instead.
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | (_MAP_HUGETLB if huge_pages else _MAP_NORESERVE)
        ranges = list(ranges)
        regions: list[MemoryRegion] = []
        for guest_addr, size in ranges:
            if huge_pages and size % HUGE_PAGE_SIZE:
                raise GuestMemoryError(f"memory size {size} is not a multiple of 2 MiB, needed for huge pages")
            # An anonymous mapping is only page-aligned; reserve 2 MiB more (never
            # touched, so free) and start guest RAM at the first 2 MiB boundary.
            slack = HUGE_PAGE_SIZE if transparent_huge_pages and not huge_pages else 0
            try:
                mapping = mmap.mmap(-1, size + slack, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)
            except OSError as exc:
                if huge_pages:  # the whole of RAM, with no region made so far holding pages back
                    for made in regions:
                        made.mapping.close()
                    raise GuestMemoryError(_huge_page_shortage(sum(n for _, n in ranges), exc)) from exc
                raise GuestMemoryError(f"cannot map {size >> 20} MiB of guest memory: {exc.strerror}") from exc
            offset = 0
            if slack:
                base = ctypes.addressof(ctypes.c_char.from_buffer(mapping))
                offset = -base % HUGE_PAGE_SIZE
                if hasattr(mmap, "MADV_HUGEPAGE"):
                    mapping.madvise(mmap.MADV_HUGEPAGE, offset, size)
            if not huge_pages and hasattr(mmap, "MADV_DONTDUMP"):
                mapping.madvise(mmap.MADV_DONTDUMP)
            regions.append(MemoryRegion(guest_addr, size, mapping, offset))
        return cls(regions)

    @classmethod
    def for_size(cls, mem_size: int, *, huge_pages: bool = False,
                 transparent_huge_pages: bool = False) -> GuestMemory:
        """Guest RAM of ``mem_size`` bytes laid out around the 32-bit MMIO gap."""
        return cls.anonymous(layout.ram_regions(mem_size), huge_pages=huge_pages,
                             transparent_huge_pages=transparent_huge_pages)

    @property
    def size(self) -> int:
        return sum(r.size for r in self.regions)

    @property
    def last_addr(self) -> int:
        """The highest guest-physical address that is RAM, plus one."""
        return self.regions[-1].end

    def _locate(self, addr: int, length: int) -> tuple[int, int]:
        if length < 0 or addr < 0:
            raise GuestMemoryError(f"bad guest range {addr:#x}+{length:#x}")
        for index, region in enumerate(self.regions):
            if region.guest_addr <= addr < region.end or (length == 0 and addr == region.end):
                offset = addr - region.guest_addr
                if offset + length > region.size:
                    raise GuestMemoryError(f"guest range {addr:#x}+{length:#x} runs past the end of RAM")
                return index, offset
        raise GuestMemoryError(f"guest address {addr:#x} is not in guest RAM")

    def check_range(self, addr: int, length: int) -> bool:
        """Whether ``[addr, addr+length)`` lies inside one RAM region."""
        try:
            self._locate(addr, length)
        except GuestMemoryError:
            return False
        return True

    def view(self, addr: int, length: int) -> memoryview:
        """A writable memoryview of guest RAM; raises GuestMemoryError if out of range."""
        index, offset = self._locate(addr, length)
        return self._views[index][offset : offset + length]

    def read(self, addr: int, length: int) -> bytes:
        return bytes(self.view(addr, length))

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        self.view(addr, len(data))[:] = data

    def read_u8(self, addr: int) -> int:
        return self.view(addr, 1)[0]

    def read_u16(self, addr: int) -> int:
        return struct.unpack_from("<H", self.view(addr, 2))[0]

    def read_u32(self, addr: int) -> int:
        return struct.unpack_from("<I", self.view(addr, 4))[0]

    def read_u64(self, addr: int) -> int:
        return struct.unpack_from("<Q", self.view(addr, 8))[0]

    def write_u8(self, addr: int, value: int) -> None:
        self.view(addr, 1)[0] = value

    def write_u16(self, addr: int, value: int) -> None:
        struct.pack_into("<H", self.view(addr, 2), 0, value)

    def write_u32(self, addr: int, value: int) -> None:
        struct.pack_into("<I", self.view(addr, 4), 0, value)

    def write_u64(self, addr: int, value: int) -> None:
        struct.pack_into("<Q", self.view(addr, 8), 0, value)

    def close(self) -> None:
        """Unmap guest RAM (views handed out earlier must be released first)."""
        for view in self._views:
            view.release()
        for region in self.regions:
            region.mapping.close()
