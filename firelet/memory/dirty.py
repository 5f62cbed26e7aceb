"""Which guest pages the guest wrote: KVM's dirty log, per memory slot.

With machine-config ``track_dirty_pages`` the builder registers every slot with
``KVM_MEM_LOG_DIRTY_PAGES`` (slot ``i`` is ``GuestMemory.regions[i]``).
``KVM_GET_DIRTY_LOG`` then hands back one bit per 4 KiB page written by the
guest since the previous call and clears the log (the kernel re-protects those
pages), which is what a diff snapshot needs. Writes made by the VMM itself
(device DMA into guest RAM) are not in KVM's log.
"""

from __future__ import annotations

from typing import Protocol

from firelet.kvm.structs import KVM_MEM_LOG_DIRTY_PAGES
from firelet.kvm.vm_fd import dirty_bitmap_size
from firelet.memory.backends import PAGE_SIZE
from firelet.memory.guest import GuestMemory


class DirtyLogVm(Protocol):
    """What is needed of a VM fd (firelet.kvm.VmFd)."""

    def get_dirty_log(self, slot: int, bitmap_size: int) -> bytearray: ...


def slot_flags(track_dirty_pages: bool) -> int:
    """The KVM_SET_USER_MEMORY_REGION flags for a RAM slot."""
    return KVM_MEM_LOG_DIRTY_PAGES if track_dirty_pages else 0


def pages_in_bitmap(bitmap: bytes | bytearray, first_page: int = 0) -> list[int]:
    """The page numbers whose bits are set (bit ``i`` of the little-endian bitmap is ``first_page + i``)."""
    value = int.from_bytes(bitmap, "little")
    pages = []
    while value:
        low = value & -value
        pages.append(first_page + low.bit_length() - 1)
        value ^= low
    return pages


def fetch_dirty_pages(vm: DirtyLogVm, memory: GuestMemory, slot: int) -> list[int]:
    """Fetch and clear slot ``slot``'s log; returns the guest page frame numbers written (gpa // 4096).

    The slot must have been registered with :func:`slot_flags` ``(True)``;
    otherwise KVM refuses (ENOENT), raised as a KvmError.
    """
    region = memory.regions[slot]
    bitmap = vm.get_dirty_log(slot, dirty_bitmap_size(region.size, PAGE_SIZE))
    return pages_in_bitmap(bitmap, region.guest_addr // PAGE_SIZE)


def fetch_all_dirty_pages(vm: DirtyLogVm, memory: GuestMemory) -> list[int]:
    """:func:`fetch_dirty_pages` for every slot, in guest-address order."""
    pages: list[int] = []
    for slot in range(len(memory.regions)):
        pages.extend(fetch_dirty_pages(vm, memory, slot))
    return pages
