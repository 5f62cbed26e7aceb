"""PVH hvm_start_info, module list and memory map, read back at the start_info.h offsets."""

from __future__ import annotations

import struct

import pytest

from firelet.arch.x86_64 import layout
from firelet.arch.x86_64.loader import BootConfigError
from firelet.arch.x86_64.pvh import write_pvh_start_info
from firelet.arch.x86_64.ram import guest_ram
from firelet.memory.guest import GuestMemory

MiB, GiB = layout.MiB, layout.GiB


@pytest.fixture
def mem() -> GuestMemory:
    memory = guest_ram(256 * MiB)
    yield memory
    memory.close()


def _start_info(mem: GuestMemory, addr: int) -> dict[str, int]:
    names = ("magic", "version", "flags", "nr_modules", "modlist_paddr", "cmdline_paddr", "rsdp_paddr",
             "memmap_paddr", "memmap_entries", "reserved")  # fmt: skip
    return dict(zip(names, struct.unpack("<IIIIQQQQII", mem.read(addr, 56)), strict=True))


def _memmap(mem: GuestMemory, info: dict[str, int]) -> list[tuple[int, int, int]]:
    return [
        struct.unpack("<QQII", mem.read(info["memmap_paddr"] + 24 * i, 24))[:3] for i in range(info["memmap_entries"])
    ]


def test_start_info_with_cmdline_and_initrd(mem: GuestMemory) -> None:
    addr = write_pvh_start_info(mem, "console=ttyS0", (200 * MiB, 4242))
    assert addr == layout.PVH_INFO_START
    info = _start_info(mem, addr)
    assert info["magic"] == 0x336EC578 and info["version"] == 1
    assert info["cmdline_paddr"] == layout.CMDLINE_START
    assert mem.read(layout.CMDLINE_START, 14) == b"console=ttyS0\x00"
    assert info["nr_modules"] == 1
    assert struct.unpack("<QQQQ", mem.read(info["modlist_paddr"], 32)) == (200 * MiB, 4242, 0, 0)
    assert info["rsdp_paddr"] == 0
    assert _memmap(mem, info) == [
        (0, 0x9FC00, 1),
        (0x9FC00, 0x100000 - 0x9FC00, 2),  # EBDA (MP table) and legacy hole: reserved
        (0x100000, 255 * MiB, 1),
    ]
    assert info["memmap_paddr"] + 24 * info["memmap_entries"] <= info["modlist_paddr"]
    assert addr + 56 <= info["memmap_paddr"]


def test_start_info_without_initrd_and_with_a_written_cmdline(mem: GuestMemory) -> None:
    info = _start_info(mem, write_pvh_start_info(mem, layout.CMDLINE_START))
    assert info["nr_modules"] == 0 and info["modlist_paddr"] == 0
    assert info["cmdline_paddr"] == layout.CMDLINE_START
    assert _start_info(mem, write_pvh_start_info(mem, None))["cmdline_paddr"] == 0


def test_memmap_for_memory_above_the_gap() -> None:
    big = guest_ram(5 * GiB)
    try:
        info = _start_info(big, write_pvh_start_info(big, None))
        entries = _memmap(big, info)
        assert entries[-1] == (4 * GiB, 5 * GiB - layout.MMIO_GAP_START, 1)
        assert entries[-2] == (0x100000, layout.MMIO_GAP_START - 0x100000, 1)
    finally:
        big.close()


def test_initrd_outside_ram_is_rejected(mem: GuestMemory) -> None:
    with pytest.raises(BootConfigError, match="not inside guest RAM"):
        write_pvh_start_info(mem, None, (255 * MiB, 2 * MiB))
