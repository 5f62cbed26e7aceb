"""The Linux zero page (``struct boot_params``), its e820 memory map, and the command line.

Field offsets are those of Documentation/arch/x86/zero-page.rst and the setup
header table of Documentation/arch/x86/boot.rst; the setup header sits at the
same offset (0x1f1) in a bzImage and in the zero page, so a bzImage's header
is copied in as-is and then the loader-owned fields are filled.
"""

from __future__ import annotations

import struct

from firelet.arch.x86_64 import layout
from firelet.arch.x86_64.loader import (
    BOOT_FLAG_MAGIC,
    HDRS_MAGIC,
    LOADED_HIGH,
    BootConfigError,
    KernelImage,
)
from firelet.memory.guest import GuestMemory

ZERO_PAGE_SIZE = 0x1000

# zero-page.rst offsets.
EXT_RAMDISK_IMAGE = 0x0C0
EXT_RAMDISK_SIZE = 0x0C4
EXT_CMD_LINE_PTR = 0x0C8
E820_ENTRIES = 0x1E8
SETUP_HEADER = 0x1F1
E820_TABLE = 0x2D0
# boot.rst setup header fields (absolute zero-page offsets).
BOOT_FLAG = 0x1FE
HEADER = 0x202
VERSION = 0x206
TYPE_OF_LOADER = 0x210
LOADFLAGS = 0x211
RAMDISK_IMAGE = 0x218
RAMDISK_SIZE = 0x21C
CMD_LINE_PTR = 0x228
KERNEL_ALIGNMENT = 0x230
CMDLINE_SIZE = 0x238

#: boot.rst, type_of_loader: 0xFF means "undefined" (a loader without an assigned ID).
TYPE_OF_LOADER_UNDEFINED = 0xFF
#: The protocol we describe in the header we make up for ELF kernels (2.12: xloadflags, 64-bit entry).
ELF_DEFAULT_VERSION = 0x020C

# e820 (arch/x86/include/uapi/asm/setup_data.h / e820 types, ACPI "Address Range Types").
E820_RAM = 1
E820_RESERVED = 2
E820_ENTRY = struct.Struct("<QQI")  # struct boot_e820_entry, packed: 20 bytes
#: zero-page.rst: e820_table holds E820_MAX_ENTRIES_ZEROPAGE (128) entries.
E820_MAX_ENTRIES = 128


def memory_map(mem: GuestMemory) -> list[tuple[int, int, int]]:
    """Guest RAM as ``[(addr, size, E820_RAM)]``: low RAM below the EBDA, RAM from 1 MiB, and the rest.

    The EBDA, the legacy 640 KiB..1 MiB hole and the MMIO gap are absent, so the
    guest treats them as not-RAM (the MP table lives in the EBDA).
    """
    entries: list[tuple[int, int, int]] = []
    for region in mem.regions:
        if region.guest_addr == 0:
            entries.append((0, min(region.end, layout.EBDA_START), E820_RAM))
            if region.end > layout.HIMEM_START:
                entries.append((layout.HIMEM_START, region.end - layout.HIMEM_START, E820_RAM))
        else:
            entries.append((region.guest_addr, region.size, E820_RAM))
    return entries


def write_boot_params(
    mem: GuestMemory,
    kernel: KernelImage,
    cmdline_size: int,
    initrd: tuple[int, int] | None = None,
) -> None:
    """Write the zero page at ZERO_PAGE_START for the 64-bit boot protocol.

    ``cmdline_size`` is the length of the command line written by
    :func:`~firelet.arch.x86_64.loader.write_cmdline`, including its NUL.
    """
    if not 0 < cmdline_size <= kernel.cmdline_max + 1:
        raise BootConfigError(
            f"kernel command line is {cmdline_size - 1} bytes, longer than the {kernel.cmdline_max} "
            "the kernel accepts; shorten it"
        )
    page = bytearray(ZERO_PAGE_SIZE)
    if kernel.setup_header is not None:
        page[SETUP_HEADER : SETUP_HEADER + len(kernel.setup_header)] = kernel.setup_header
        page[LOADFLAGS] |= LOADED_HIGH
    else:
        struct.pack_into("<H", page, BOOT_FLAG, BOOT_FLAG_MAGIC)
        page[HEADER : HEADER + 4] = HDRS_MAGIC
        struct.pack_into("<H", page, VERSION, ELF_DEFAULT_VERSION)
        page[LOADFLAGS] = LOADED_HIGH
        struct.pack_into("<I", page, KERNEL_ALIGNMENT, kernel.kernel_alignment)
    page[TYPE_OF_LOADER] = TYPE_OF_LOADER_UNDEFINED
    struct.pack_into("<I", page, CMD_LINE_PTR, layout.CMDLINE_START)
    struct.pack_into("<I", page, EXT_CMD_LINE_PTR, layout.CMDLINE_START >> 32)
    struct.pack_into("<I", page, CMDLINE_SIZE, cmdline_size)
    if initrd is not None:
        addr, size = initrd
        if size <= 0 or not mem.check_range(addr, size):
            raise BootConfigError(f"initrd at {addr:#x}+{size:#x} is not inside guest RAM")
        # boot.rst: ramdisk_image/size are the low 32 bits; zero-page.rst ext_* hold the high 32.
        struct.pack_into("<I", page, RAMDISK_IMAGE, addr & 0xFFFFFFFF)
        struct.pack_into("<I", page, RAMDISK_SIZE, size & 0xFFFFFFFF)
        struct.pack_into("<I", page, EXT_RAMDISK_IMAGE, addr >> 32)
        struct.pack_into("<I", page, EXT_RAMDISK_SIZE, size >> 32)
    entries = memory_map(mem)
    if len(entries) > E820_MAX_ENTRIES:
        raise BootConfigError(f"guest memory map has {len(entries)} ranges; the zero page holds {E820_MAX_ENTRIES}")
    page[E820_ENTRIES] = len(entries)
    for i, entry in enumerate(entries):
        E820_ENTRY.pack_into(page, E820_TABLE + i * E820_ENTRY.size, *entry)
    mem.write(layout.ZERO_PAGE_START, page)
