"""Where guest RAM comes from: anonymous memory, a memfd, or a file.

Each backend maps host memory for a list of ``(guest_addr, size)`` ranges and
returns one :class:`MemoryRegion` per range. The memfd and file backends lay the
ranges out back to back in one fd, in guest-address order (the layout a
snapshot's memory file has), so the fd holds all of guest RAM and can be handed
to another process or written out as is.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from collections.abc import Iterable
from typing import NamedTuple

from firelet.errors import FireletError

PAGE_SIZE = 4096
HUGE_PAGE_SIZE = 2 << 20  # x86-64 large page (Intel SDM vol. 3, 4.5)
_MAP_HUGETLB = 0x40000  # linux/mman.h
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)
_PROT_RW = mmap.PROT_READ | mmap.PROT_WRITE


class GuestMemoryError(FireletError):
    """A guest-physical range that is not (wholly) inside guest RAM, or RAM that cannot be mapped."""


class MemoryRegion(NamedTuple):
    """One contiguous stretch of guest RAM backed by one host mapping."""

    guest_addr: int
    size: int
    mapping: mmap.mmap
    offset: int = 0  # where guest RAM starts inside ``mapping`` (aligned for huge pages)
    fd: int = -1  # the memfd or file behind a mapping (-1: anonymous); owned by GuestMemory
    fd_offset: int = 0  # where this region starts in ``fd``
    shared: bool = False  # MAP_SHARED: writes reach ``fd`` (and every other mapping of it)
    page_size: int = PAGE_SIZE

    @property
    def end(self) -> int:
        return self.guest_addr + self.size

    @property
    def host_addr(self) -> int:
        """The host virtual address of guest RAM (for KVM_SET_USER_MEMORY_REGION)."""
        return ctypes.addressof(ctypes.c_char.from_buffer(self.mapping)) + self.offset


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


def anonymous(ranges: Iterable[tuple[int, int]], *, huge_pages: bool = False,
              transparent_huge_pages: bool = False) -> list[MemoryRegion]:
    """Fresh zeroed private memory per range; pages are committed on first touch.

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
    try:
        for guest_addr, size in ranges:
            if huge_pages and size % HUGE_PAGE_SIZE:
                raise GuestMemoryError(f"memory size {size} is not a multiple of 2 MiB, needed for huge pages")
            # An anonymous mapping is only page-aligned; reserve 2 MiB more (never
            # touched, so free) and start guest RAM at the first 2 MiB boundary.
            slack = HUGE_PAGE_SIZE if transparent_huge_pages and not huge_pages else 0
            try:
                mapping = mmap.mmap(-1, size + slack, flags=flags, prot=_PROT_RW)
            except OSError as exc:
                if huge_pages:
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
            page = HUGE_PAGE_SIZE if huge_pages else PAGE_SIZE
            regions.append(MemoryRegion(guest_addr, size, mapping, offset, page_size=page))
    except BaseException:
        release(regions)
        raise
    return regions


def memfd(ranges: Iterable[tuple[int, int]], *, name: str = "firelet-guest-ram") -> list[MemoryRegion]:
    """One memfd holding every range back to back, its size sealed, mapped shared.

    The seals (no grow, no shrink) let another process that receives the fd map
    it without fearing a truncation (SIGBUS); writes and hole punching stay allowed.
    """
    ranges = list(ranges)
    total = sum(size for _, size in ranges)
    try:
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    except OSError as exc:
        raise GuestMemoryError(f"cannot create a memfd for guest memory: {exc.strerror}") from exc
    try:
        os.ftruncate(fd, total)
        import fcntl

        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
    except OSError as exc:
        os.close(fd)
        raise GuestMemoryError(f"cannot size {total >> 20} MiB of memfd guest memory: {exc.strerror}") from exc
    return _map_fd(fd, ranges, shared=True, what="memfd")


def file(path: str | os.PathLike[str], ranges: Iterable[tuple[int, int]], *, shared: bool = False,
         create: bool = False) -> list[MemoryRegion]:
    """Guest RAM from ``path``: the ranges back to back from offset 0.

    Private (the default): the guest starts from the file's bytes and its writes
    stay in this process (copy-on-write, how a snapshot's memory is loaded).
    Shared: writes go to the file. ``create`` makes a new sparse file of the
    right size (refusing to overwrite one).
    """
    ranges = list(ranges)
    total = sum(size for _, size in ranges)
    path = os.fspath(path)
    flags = os.O_CLOEXEC | (os.O_RDWR if shared or create else os.O_RDONLY)
    if create:
        flags |= os.O_CREAT | os.O_EXCL
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        raise GuestMemoryError(f"cannot open guest memory file {path}: {exc.strerror}") from exc
    try:
        if create:
            os.ftruncate(fd, total)
        have = os.fstat(fd).st_size
    except OSError as exc:
        os.close(fd)
        raise GuestMemoryError(f"cannot size guest memory file {path}: {exc.strerror}") from exc
    if have < total:
        os.close(fd)
        raise GuestMemoryError(
            f"guest memory file {path} has {have} bytes but the guest needs {total}; give the file "
            "saved with this memory size"
        )
    return _map_fd(fd, ranges, shared=shared, what=f"file {path}")


def _map_fd(fd: int, ranges: list[tuple[int, int]], *, shared: bool, what: str) -> list[MemoryRegion]:
    """Map consecutive slices of ``fd``; on failure the fd and any mappings are released."""
    flags = mmap.MAP_SHARED if shared else mmap.MAP_PRIVATE | _MAP_NORESERVE
    regions: list[MemoryRegion] = []
    fd_offset = 0
    try:
        for guest_addr, size in sorted(ranges):
            try:
                mapping = mmap.mmap(fd, size, flags=flags, prot=_PROT_RW, offset=fd_offset)
            except OSError as exc:
                raise GuestMemoryError(f"cannot map {size >> 20} MiB of guest memory from {what}: "
                                       f"{exc.strerror}") from exc
            if hasattr(mmap, "MADV_DONTDUMP"):
                mapping.madvise(mmap.MADV_DONTDUMP)
            regions.append(MemoryRegion(guest_addr, size, mapping, 0, fd, fd_offset, shared))
            fd_offset += size
    except BaseException:
        release(regions)
        if not regions:
            os.close(fd)
        raise
    return regions


def release(regions: Iterable[MemoryRegion]) -> None:
    """Unmap the regions and close their fds (each fd once)."""
    closed: set[int] = set()
    for region in regions:
        region.mapping.close()
        if region.fd >= 0 and region.fd not in closed:
            closed.add(region.fd)
            os.close(region.fd)


_libc = None


def punch_hole(fd: int, offset: int, length: int) -> None:
    """fallocate(PUNCH_HOLE | KEEP_SIZE): free the blocks; every mapping then reads zeros there."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    falloc_fl_keep_size, falloc_fl_punch_hole = 0x01, 0x02  # linux/falloc.h
    if _libc.fallocate(fd, falloc_fl_keep_size | falloc_fl_punch_hole, offset, length) != 0:
        err = ctypes.get_errno()
        raise GuestMemoryError(f"cannot discard guest memory (fallocate punch hole): {os.strerror(err)}")
