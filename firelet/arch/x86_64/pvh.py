"""The PVH boot information: ``hvm_start_info``, its module list and its memory map.

Layouts are those of xen/include/public/arch-x86/hvm/start_info.h (version 1,
which adds the memory map). A PVH kernel is entered in 32-bit protected mode
with ``%ebx`` pointing at the start_info (see :mod:`firelet.arch.x86_64.regs`).
"""

from __future__ import annotations

import struct

from firelet.arch.x86_64 import layout
from firelet.arch.x86_64.bootparams import memory_map
from firelet.arch.x86_64.loader import BootConfigError, KernelImage, write_cmdline
from firelet.memory.guest import GuestMemory

XEN_HVM_START_MAGIC_VALUE = 0x336EC578
START_INFO_VERSION = 1
# start_info.h memory map types (the same numbering as e820).
XEN_HVM_MEMMAP_TYPE_RAM = 1
XEN_HVM_MEMMAP_TYPE_RESERVED = 2

# struct hvm_start_info: magic, version, flags, nr_modules, modlist_paddr, cmdline_paddr,
# rsdp_paddr, memmap_paddr, memmap_entries, reserved (56 bytes).
START_INFO = struct.Struct("<IIIIQQQQII")
# struct hvm_modlist_entry: paddr, size, cmdline_paddr, reserved (32 bytes).
MODLIST_ENTRY = struct.Struct("<QQQQ")
# struct hvm_memmap_table_entry: addr, size, type, reserved (24 bytes).
MEMMAP_ENTRY = struct.Struct("<QQII")
MAX_MEMMAP_ENTRIES = (layout.PVH_MODLIST_START - layout.PVH_MEMMAP_START) // MEMMAP_ENTRY.size


def pvh_memory_map(mem: GuestMemory) -> list[tuple[int, int, int]]:
    """The e820-style RAM map plus the EBDA and legacy hole marked reserved, sorted by address."""
    entries = memory_map(mem)
    entries.append((layout.EBDA_START, layout.HIMEM_START - layout.EBDA_START, XEN_HVM_MEMMAP_TYPE_RESERVED))
    return sorted(entries)


def write_pvh_start_info(
    mem: GuestMemory,
    cmdline: str | int | None,
    initrd: tuple[int, int] | None = None,
    *,
    kernel: KernelImage | None = None,
) -> int:
    """Write start_info, the module list (the initrd) and the memory map; returns start_info's address.

    ``cmdline`` is either the command line itself (written at CMDLINE_START
    here, checked against ``kernel``'s limit) or the guest address where it was
    already written, or None.
    """
    if isinstance(cmdline, str):
        write_cmdline(mem, cmdline, kernel=kernel)
        cmdline_paddr = layout.CMDLINE_START
    else:
        cmdline_paddr = cmdline or 0  # start_info.h: a 0 address means "not present"
    nr_modules, modlist_paddr = 0, 0
    if initrd is not None:
        addr, size = initrd
        if size <= 0 or not mem.check_range(addr, size):
            raise BootConfigError(f"initrd at {addr:#x}+{size:#x} is not inside guest RAM")
        mem.write(layout.PVH_MODLIST_START, MODLIST_ENTRY.pack(addr, size, 0, 0))
        nr_modules, modlist_paddr = 1, layout.PVH_MODLIST_START
    entries = pvh_memory_map(mem)
    if len(entries) > MAX_MEMMAP_ENTRIES:
        raise BootConfigError(f"guest memory map has {len(entries)} ranges; PVH boot holds {MAX_MEMMAP_ENTRIES}")
    mem.write(layout.PVH_MEMMAP_START, b"".join(MEMMAP_ENTRY.pack(a, s, t, 0) for a, s, t in entries))
    info = START_INFO.pack(
        XEN_HVM_START_MAGIC_VALUE, START_INFO_VERSION, 0, nr_modules, modlist_paddr, cmdline_paddr,
        0, layout.PVH_MEMMAP_START, len(entries), 0,
    )  # fmt: skip
    mem.write(layout.PVH_INFO_START, info)
    return layout.PVH_INFO_START
