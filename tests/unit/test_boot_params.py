"""The zero page: setup header fields at their boot.rst offsets, and the e820 map."""

from __future__ import annotations

import struct

import pytest

from firelet.arch.x86_64 import layout
from firelet.arch.x86_64.bootparams import E820_RAM, memory_map, write_boot_params
from firelet.arch.x86_64.loader import BootConfigError, KernelImage, Segment
from firelet.arch.x86_64.ram import guest_ram
from firelet.memory.guest import GuestMemory

MiB, GiB = layout.MiB, layout.GiB
ZP = layout.ZERO_PAGE_START


def _elf_kernel() -> KernelImage:
    return KernelImage("elf", 16 * MiB, None, (Segment(0, 0, 16 * MiB, MiB),), 17 * MiB)


def _bz_kernel() -> KernelImage:
    header = bytearray(0x26C - 0x1F1)

    def put(offset: int, fmt: str, value: int) -> None:
        struct.pack_into(fmt, header, offset - 0x1F1, value)

    put(0x1F1, "<B", 27)  # setup_sects
    put(0x1FE, "<H", 0xAA55)
    header[0x202 - 0x1F1 : 0x206 - 0x1F1] = b"HdrS"
    put(0x206, "<H", 0x020F)
    put(0x210, "<B", 0x00)  # type_of_loader from the image: must be replaced
    put(0x211, "<B", 0x80)  # CAN_USE_HEAP only: LOADED_HIGH must be added
    put(0x22C, "<I", 0x7FFFFFFF)
    put(0x230, "<I", 0x200000)
    put(0x236, "<H", 0x7F)
    put(0x238, "<I", 2047)
    put(0x260, "<I", 0x2000000)
    return KernelImage("bzimage", 0x100200, None, (Segment(0x3800, 0x1000, 0x100000, 0x1000),), 0x2100000,
                       setup_header=bytes(header), initrd_addr_max=0x7FFFFFFF, cmdline_max=2047)  # fmt: skip


@pytest.fixture
def mem() -> GuestMemory:
    memory = guest_ram(128 * MiB)
    yield memory
    memory.close()


def _u(mem: GuestMemory, offset: int, fmt: str) -> int:
    return struct.unpack(fmt, mem.read(ZP + offset, struct.calcsize(fmt)))[0]


def _e820(mem: GuestMemory) -> list[tuple[int, int, int]]:
    count = mem.read_u8(ZP + 0x1E8)
    return [struct.unpack("<QQI", mem.read(ZP + 0x2D0 + 20 * i, 20)) for i in range(count)]


def test_e820_small_memory(mem: GuestMemory) -> None:
    assert memory_map(mem) == [(0, 0x9FC00, E820_RAM), (0x100000, 127 * MiB, E820_RAM)]


def test_e820_large_memory_is_split_around_the_mmio_gap() -> None:
    big = guest_ram(6 * GiB)
    try:
        write_boot_params(big, _elf_kernel(), 10)
        low_end = layout.MMIO_GAP_START
        assert _e820(big) == [
            (0, 0x9FC00, E820_RAM),
            (0x100000, low_end - 0x100000, E820_RAM),
            (4 * GiB, 6 * GiB - low_end, E820_RAM),
        ]
        assert all(not (a < layout.MMIO_GAP_END and a + s > layout.MMIO_GAP_START) for a, s, _ in _e820(big))
    finally:
        big.close()


def test_elf_zero_page_gets_a_made_up_header_at_the_boot_protocol_offsets(mem: GuestMemory) -> None:
    mem.write(ZP, b"\xee" * 4096)  # stale bytes: the zero page must be cleared
    write_boot_params(mem, _elf_kernel(), 23, (100 * MiB, 12345))
    assert _u(mem, 0x1FE, "<H") == 0xAA55  # boot_flag
    assert mem.read(ZP + 0x202, 4) == b"HdrS"  # header
    assert _u(mem, 0x206, "<H") >= 0x020C  # version
    assert _u(mem, 0x210, "<B") == 0xFF  # type_of_loader: undefined
    assert _u(mem, 0x211, "<B") & 0x01  # loadflags: LOADED_HIGH
    assert _u(mem, 0x218, "<I") == 100 * MiB  # ramdisk_image
    assert _u(mem, 0x21C, "<I") == 12345  # ramdisk_size
    assert _u(mem, 0x228, "<I") == layout.CMDLINE_START  # cmd_line_ptr
    assert _u(mem, 0x230, "<I") == 0x1000000  # kernel_alignment
    assert _u(mem, 0x238, "<I") == 23  # cmdline_size
    assert _u(mem, 0x0C0, "<I") == 0 and _u(mem, 0x0C8, "<I") == 0  # ext_ramdisk_image, ext_cmd_line_ptr
    assert _e820(mem) == memory_map(mem)
    assert mem.read(ZP + 0x2D0 + 20 * 2, 4096 - 0x2D0 - 40) == bytes(4096 - 0x2D0 - 40)
    assert mem.read(ZP, 0xC0) == bytes(0xC0)  # the rest of the page was cleared
    assert mem.read(ZP + 0xCC, 0x1E8 - 0xCC) == bytes(0x1E8 - 0xCC)


def test_bzimage_header_is_copied_and_loader_fields_filled(mem: GuestMemory) -> None:
    write_boot_params(mem, _bz_kernel(), 100)
    assert _u(mem, 0x1F1, "<B") == 27  # setup_sects copied from the image
    assert _u(mem, 0x206, "<H") == 0x020F
    assert _u(mem, 0x22C, "<I") == 0x7FFFFFFF  # initrd_addr_max kept
    assert _u(mem, 0x260, "<I") == 0x2000000  # init_size kept
    assert _u(mem, 0x210, "<B") == 0xFF
    assert _u(mem, 0x211, "<B") == 0x81  # the kernel's CAN_USE_HEAP kept, LOADED_HIGH added
    assert _u(mem, 0x228, "<I") == layout.CMDLINE_START
    assert _u(mem, 0x218, "<I") == 0 and _u(mem, 0x21C, "<I") == 0  # no initrd
    assert _u(mem, 0x238, "<I") == 100


def test_cmdline_longer_than_the_kernel_takes_is_rejected(mem: GuestMemory) -> None:
    with pytest.raises(BootConfigError, match="2048 bytes, longer than the 2047"):
        write_boot_params(mem, _bz_kernel(), 2049)


def test_initrd_outside_ram_is_rejected(mem: GuestMemory) -> None:
    with pytest.raises(BootConfigError, match="not inside guest RAM"):
        write_boot_params(mem, _elf_kernel(), 10, (127 * MiB, 2 * MiB))
