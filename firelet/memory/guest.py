"""Guest RAM, reached only through bounds-checked views, whatever backs it.

All guest-physical accesses in firelet (the loader, boot structures, virtqueues,
device I/O) go through :class:`GuestMemory`, so a hostile or wrong guest address
is a :class:`GuestMemoryError` in exactly one place, never a host crash or a
read of host memory. The host memory behind it comes from
:mod:`firelet.memory.backends` (anonymous, memfd or a file); KVM memory slot
``i`` is region ``i`` (see :mod:`firelet.memory.dirty`).

Integers go in with one store each (``write_u16``..``write_u64``): a vCPU may read
the same bytes at that moment (a ring's index), and ``struct.pack_into`` zeroes its
target before it writes the value, so a driver polling a used ring would see its
index at 0 for an instant and take entries from the ring's previous lap. x86 is
little-endian, so the native format of a ``memoryview.cast`` is the guest's.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterable, Sequence
from typing import BinaryIO

from firelet.memory import backends
from firelet.memory.backends import (
    HUGE_PAGE_SIZE,
    PAGE_SIZE,
    GuestMemoryError,
    MemoryRegion,
)

__all__ = ["HUGE_PAGE_SIZE", "PAGE_SIZE", "GuestMemory", "GuestMemoryError", "MemoryRegion"]


class GuestMemory:
    """Guest RAM made of non-overlapping regions, sorted by guest address.

    ``backend`` names where the memory came from: ``"anonymous"``, ``"memfd"``
    or ``"file"``. The regions (their mappings and fds) belong to this object
    and are released by :meth:`close`.
    """

    def __init__(self, regions: Sequence[MemoryRegion], backend: str = "anonymous") -> None:
        self.regions: tuple[MemoryRegion, ...] = tuple(sorted(regions, key=lambda r: r.guest_addr))
        for prev, cur in zip(self.regions, self.regions[1:], strict=False):
            if cur.guest_addr < prev.end:
                backends.release(self.regions)
                raise ValueError("guest memory regions overlap")
        self.backend = backend
        self._views = [memoryview(r.mapping)[r.offset : r.offset + r.size] for r in self.regions]

    @classmethod
    def anonymous(cls, ranges: Iterable[tuple[int, int]], *, huge_pages: bool = False,
                  transparent_huge_pages: bool = False) -> GuestMemory:
        """Private zeroed memory per ``(guest_addr, size)`` (see :func:`backends.anonymous`)."""
        regions = backends.anonymous(ranges, huge_pages=huge_pages, transparent_huge_pages=transparent_huge_pages)
        return cls(regions, "anonymous")

    @classmethod
    def memfd(cls, ranges: Iterable[tuple[int, int]]) -> GuestMemory:
        """Shared memory in one size-sealed memfd (:attr:`fd`), to hand to another process or write out."""
        return cls(backends.memfd(ranges), "memfd")

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], ranges: Iterable[tuple[int, int]], *,
                  shared: bool = False, create: bool = False) -> GuestMemory:
        """RAM from a file laid out as :meth:`write_to` writes it (see :func:`backends.file`)."""
        return cls(backends.file(path, ranges, shared=shared, create=create), "file")

    @property
    def fd(self) -> int:
        """The memfd or file holding all of guest RAM, or -1 for anonymous memory."""
        return self.regions[0].fd if self.regions else -1

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

    def host_address(self, addr: int, length: int) -> int:
        """Where ``[addr, addr+length)`` lives in this process (it must lie in one region), for the kernel."""
        index, offset = self._locate(addr, length)
        return self.regions[index].host_addr + offset

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
        self.view(addr, 2).cast("H")[0] = value  # one store: see the module docstring

    def write_u32(self, addr: int, value: int) -> None:
        self.view(addr, 4).cast("I")[0] = value

    def write_u64(self, addr: int, value: int) -> None:
        self.view(addr, 8).cast("Q")[0] = value

    def discard(self, addr: int, length: int) -> None:
        """Give ``[addr, addr+length)`` back to the host; the guest then reads zeros there.

        Page-aligned (2 MiB with huge pages) and inside one region. Private memory
        drops its pages (MADV_DONTNEED; a private file mapping reads the file's
        bytes again); shared memory punches a hole in its memfd or file, which
        every mapping of it sees.
        """
        index, offset = self._locate(addr, length)
        region = self.regions[index]
        if addr % region.page_size or length % region.page_size:
            raise GuestMemoryError(
                f"cannot discard guest range {addr:#x}+{length:#x}: not aligned to the {region.page_size}-byte page"
            )
        if length == 0:
            return
        if region.shared and region.fd >= 0:
            backends.punch_hole(region.fd, region.fd_offset + offset, length)
        else:
            region.mapping.madvise(mmap.MADV_DONTNEED, region.offset + offset, length)

    def write_to(self, out: BinaryIO) -> int:
        """Write every region, in guest-address order and back to back; returns the bytes written.

        The layout :meth:`from_file` and the memfd backend use, so a file written
        here restores with the same ``ranges``.
        """
        total = 0
        for view in self._views:
            out.write(view)
            total += len(view)
        return total

    def close(self) -> None:
        """Unmap guest RAM and close its fd (views handed out earlier must be released first)."""
        for view in self._views:
            view.release()
        backends.release(self.regions)
        self.regions = ()
        self._views = []
