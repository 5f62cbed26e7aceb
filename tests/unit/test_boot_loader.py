"""Kernel and initrd loading, from hand-made ELF and bzImage bytes."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firelet.arch.x86_64 import layout
from firelet.arch.x86_64.loader import (
    DEFAULT_INITRD_ADDR_MAX,
    BootConfigError,
    KernelImage,
    KernelLoadError,
    Segment,
    initrd_address,
    load_initrd,
    load_kernel,
    load_kernel_data,
    parse_kernel,
    write_cmdline,
)
from firelet.arch.x86_64.ram import guest_ram
from firelet.memory.guest import GuestMemory

MiB = layout.MiB
KERNEL_PADDR = 16 * MiB


def make_elf(
    segments: list[tuple[int, bytes, int]],
    entry: int,
    *,
    pvh: int | None = None,
    pvh_size: int = 8,
    machine: int = 62,
    elf_class: int = 2,
) -> bytes:
    """An ELF64 executable: ``segments`` are (paddr, file bytes, memsz); an optional Xen PVH note."""
    notes = b""
    if pvh is not None:
        other = struct.pack("<III", 4, 4, 1) + b"GNU\x00" + b"abcd"  # a note to skip over
        notes = other + struct.pack("<III", 4, pvh_size, 18) + b"Xen\x00" + pvh.to_bytes(pvh_size, "little")
    nph = len(segments) + (1 if notes else 0)
    offset = 64 + 56 * nph
    phdrs, body = b"", b""
    for paddr, data, memsz in segments:
        phdrs += struct.pack("<IIQQQQQQ", 1, 7, offset + len(body), paddr | 0xFFFFFFFF80000000, paddr,
                             len(data), memsz, 0x200000)  # fmt: skip
        body += data
    if notes:
        phdrs += struct.pack("<IIQQQQQQ", 4, 4, offset + len(body), 0, 0, len(notes), len(notes), 4)
        body += notes
    ident = b"\x7fELF" + bytes([elf_class, 1, 1]) + bytes(9)
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", ident, 2, machine, 1, entry, 64, 0, 0, 64, 56, nph, 64, 0, 0)
    return ehdr + phdrs + body


def make_bzimage(
    payload: bytes,
    *,
    version: int = 0x020F,
    setup_sects: int = 4,
    loadflags: int = 0x01,
    xloadflags: int = 0x01,
    init_size: int = 0,
    initrd_addr_max: int = 0x7FFFFFFF,
    cmdline_size: int = 2047,
    syssize: int | None = None,
    relocatable: int = 1,
    pref_address: int = 0x1000000,
) -> bytes:
    """A bzImage: setup sectors holding a 2.15-sized setup header, then ``payload`` (16-byte multiple)."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    struct.pack_into("<I", setup, 0x1F4, len(payload) // 16 if syssize is None else syssize)
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)
    setup[0x200:0x202] = bytes([0xEB, 0x26C - 0x202])
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    setup[0x211] = loadflags
    struct.pack_into("<I", setup, 0x22C, initrd_addr_max)
    struct.pack_into("<I", setup, 0x230, 0x200000)
    struct.pack_into("<H", setup, 0x236, xloadflags)
    struct.pack_into("<I", setup, 0x238, cmdline_size)
    setup[0x234] = relocatable
    struct.pack_into("<Q", setup, 0x258, pref_address)
    struct.pack_into("<I", setup, 0x260, init_size)
    return bytes(setup) + payload


@pytest.fixture
def mem() -> GuestMemory:
    memory = guest_ram(64 * MiB)
    yield memory
    memory.close()


def _elf_image() -> bytes:
    text = bytes(range(256)) * 16
    return make_elf([(KERNEL_PADDR, text, len(text) + 0x3000), (KERNEL_PADDR + 0x100000, b"data" * 8, 32)],
                    KERNEL_PADDR + 0x40, pvh=KERNEL_PADDR + 0x80)  # fmt: skip


# -- ELF -----------------------------------------------------------------------


def test_elf_segments_land_at_their_physical_addresses_with_zeroed_bss(mem: GuestMemory) -> None:
    mem.write(KERNEL_PADDR, b"\xaa" * 0x5000)  # stale bytes where the bss goes
    kernel = load_kernel_data(mem, _elf_image())
    assert kernel.kind == "elf"
    assert kernel.entry == KERNEL_PADDR + 0x40
    assert kernel.pvh_entry == KERNEL_PADDR + 0x80
    assert mem.read(KERNEL_PADDR, 4096) == bytes(range(256)) * 16
    assert mem.read(KERNEL_PADDR + 4096, 0x3000) == bytes(0x3000)
    assert mem.read(KERNEL_PADDR + 0x100000, 32) == b"data" * 8
    assert kernel.end == KERNEL_PADDR + 0x100000 + 32
    assert kernel.setup_header is None
    assert kernel.initrd_addr_max == DEFAULT_INITRD_ADDR_MAX


def test_elf_pvh_note_may_be_32_bit_and_is_optional() -> None:
    seg = [(KERNEL_PADDR, b"\x90" * 64, 64)]
    assert parse_kernel(make_elf(seg, KERNEL_PADDR, pvh=KERNEL_PADDR + 8, pvh_size=4)).pvh_entry == KERNEL_PADDR + 8
    assert parse_kernel(make_elf(seg, KERNEL_PADDR)).pvh_entry is None


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (make_elf([(KERNEL_PADDR, b"x" * 64, 64)], KERNEL_PADDR, machine=3), "x86-64"),
        (make_elf([(KERNEL_PADDR, b"x" * 64, 64)], KERNEL_PADDR, elf_class=1), "x86-64"),
        (make_elf([(0x7000, b"x" * 64, 64)], 0x7000), "outside 1 MiB"),
        (make_elf([(KERNEL_PADDR, b"x" * 64, 64)], 0x1234), "entry point"),
        (make_elf([(KERNEL_PADDR, b"x" * 64, 32)], KERNEL_PADDR), "more file bytes"),
        (make_elf([(KERNEL_PADDR, b"x" * 64, 64), (KERNEL_PADDR + 32, b"y", 1)], KERNEL_PADDR), "overlap"),
        (make_elf([], 0), "no usable program headers"),
        (make_elf([(KERNEL_PADDR, b"x" * 64, 64)], KERNEL_PADDR, pvh=5 << 32), "above 4 GiB"),
        (_elf_image()[:40], "truncated"),
        (_elf_image()[:100], "truncated"),
        (_elf_image()[:-10], "truncated"),
        (b"#!/bin/sh\necho not a kernel\n" * 40, "neither an ELF vmlinux nor a bzImage"),
    ],
)
def test_bad_elf_images_are_rejected_with_a_reason(blob: bytes, message: str) -> None:
    with pytest.raises(KernelLoadError, match=message):
        parse_kernel(blob)


def test_kernel_bigger_than_guest_ram_is_a_clear_error(mem: GuestMemory) -> None:
    blob = make_elf([(KERNEL_PADDR, b"x" * 64, 60 * MiB)], KERNEL_PADDR)
    with pytest.raises(KernelLoadError, match=r"set machine-config\.mem_size_mib to more than 76"):
        load_kernel_data(mem, blob)


def test_the_smallest_vm_holds_the_boot_structures_and_says_where_the_kernel_must_fit() -> None:
    """1 MiB (machine-config's floor) holds everything below the kernel; a kernel at 16 MiB needs more."""
    from firelet.arch.x86_64 import bootparams, mptable
    from firelet.config.model import MIN_MEM_SIZE_MIB

    tiny = guest_ram(MIN_MEM_SIZE_MIB * MiB)
    for addr in (layout.BOOT_GDT_START, layout.ZERO_PAGE_START, layout.PDE_START + 0xFFF,
                 layout.CMDLINE_START + layout.CMDLINE_MAX_SIZE - 1, layout.MPTABLE_START):
        assert tiny.check_range(addr, 1), hex(addr)
    mptable.write_mptable(tiny, 32)
    assert bootparams.memory_map(tiny) == [(0, layout.EBDA_START, bootparams.E820_RAM)]
    blob = make_elf([(KERNEL_PADDR, b"x" * 64, 2 * MiB)], KERNEL_PADDR)
    with pytest.raises(KernelLoadError, match=r"VM's 1 MiB of RAM .*mem_size_mib to more than 18 "):
        load_kernel_data(tiny, blob)


# -- bzImage -------------------------------------------------------------------


def test_bzimage_protected_mode_kernel_goes_to_1mib_and_keeps_its_header(mem: GuestMemory) -> None:
    payload = bytes(range(256)) * 64
    blob = make_bzimage(payload, init_size=8 * MiB, initrd_addr_max=0x1FFFFFFF, cmdline_size=255)
    kernel = load_kernel_data(mem, blob)
    assert kernel.kind == "bzimage"
    assert kernel.entry == layout.HIMEM_START + 0x200  # boot.rst "64-bit BOOT PROTOCOL"
    assert kernel.pvh_entry is None
    assert mem.read(layout.HIMEM_START, len(payload)) == payload
    assert kernel.end == 16 * MiB + 8 * MiB  # runtime start (pref_address) + init_size
    assert kernel.setup_header == blob[0x1F1:0x26C]
    assert kernel.initrd_addr_max == 0x1FFFFFFF
    assert kernel.cmdline_max == 255
    assert kernel.kernel_alignment == 0x200000


@pytest.mark.parametrize(
    ("relocatable", "pref", "align", "end"),
    [
        (1, 0x1000000, 0x200000, 0x1000000 + 4 * MiB),  # relocatable: runs at pref_address
        (1, 0, 0x200000, 0x200000 + 4 * MiB),  # ... or at the load address aligned up
        (1, 0x1100000, 0x1000000, 0x2000000 + 4 * MiB),  # pref_address aligned up to kernel_alignment
        (0, 0x1000000, 0x200000, 0x1000000 + 4 * MiB),  # fixed: runs at pref_address
    ],
)
def test_bzimage_end_follows_the_runtime_start_algorithm(relocatable: int, pref: int, align: int, end: int) -> None:
    blob = bytearray(make_bzimage(b"K" * 512, init_size=4 * MiB, relocatable=relocatable, pref_address=pref))
    struct.pack_into("<I", blob, 0x230, align)
    assert parse_kernel(bytes(blob)).end == end


def test_bzimage_setup_sects_zero_means_four() -> None:
    blob = bytearray(make_bzimage(b"K" * 512, setup_sects=4))
    blob[0x1F1] = 0
    kernel = parse_kernel(bytes(blob))
    assert kernel.segments == (Segment(5 * 512, 512, layout.HIMEM_START, 512),)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"version": 0x020B}, "boot protocol 2.11"),
        ({"loadflags": 0}, "not LOADED_HIGH"),
        ({"xloadflags": 0}, "XLF_KERNEL_64"),
        ({"syssize": 1000}, "truncated"),
        ({"syssize": 0}, "truncated"),
    ],
)
def test_bad_bzimages_are_rejected_with_a_reason(kwargs: dict, message: str) -> None:
    with pytest.raises(KernelLoadError, match=message):
        parse_kernel(make_bzimage(b"K" * 1024, **kwargs))


def test_bzimage_whose_init_size_exceeds_ram_does_not_load(mem: GuestMemory) -> None:
    with pytest.raises(KernelLoadError, match="does not fit"):
        load_kernel_data(mem, make_bzimage(b"K" * 1024, init_size=80 * MiB))


def test_bzimage_header_cut_short_is_rejected() -> None:
    blob = bytearray(make_bzimage(b"K" * 1024))
    blob[0x201] = 0x10  # header ends at 0x212, before xloadflags
    with pytest.raises(KernelLoadError, match="too short"):
        parse_kernel(bytes(blob))


# -- files -----------------------------------------------------------------------


def test_load_kernel_reads_a_file(mem: GuestMemory, tmp_path: Path) -> None:
    path = tmp_path / "vmlinux"
    path.write_bytes(_elf_image())
    assert load_kernel(mem, path).entry == KERNEL_PADDR + 0x40
    assert mem.read(KERNEL_PADDR, 4) == bytes(range(4))


@pytest.mark.parametrize("fresh", [False, True])
def test_load_kernel_zeroes_the_bss_unless_the_memory_is_fresh(tmp_path: Path, fresh: bool) -> None:
    path = tmp_path / "vmlinux"
    path.write_bytes(_elf_image())
    memory = guest_ram(64 << 20)
    try:
        if not fresh:
            memory.write(KERNEL_PADDR, b"\xaa" * 0x5000)  # stale bytes where the bss goes
        load_kernel(memory, path, fresh_memory=fresh)
        assert memory.read(KERNEL_PADDR + 4096, 0x3000) == bytes(0x3000)
    finally:
        memory.close()


@pytest.mark.parametrize("content", [None, b""])
def test_missing_or_empty_kernel_file_is_a_one_line_error(mem: GuestMemory, tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "vmlinux"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(KernelLoadError, match=r"vmlinux") as info:
        load_kernel(mem, path)
    assert "\n" not in str(info.value)


def test_directory_or_fifo_is_not_an_image(mem: GuestMemory, tmp_path: Path) -> None:
    with pytest.raises(KernelLoadError, match="not a regular file"):
        load_kernel(mem, tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(KernelLoadError, match="not a regular file"):
        load_initrd(mem, fifo, _kernel())


def test_kernel_error_names_the_file(mem: GuestMemory, tmp_path: Path) -> None:
    path = tmp_path / "notakernel"
    path.write_bytes(b"hello" * 100)
    with pytest.raises(KernelLoadError, match=f"{path}: kernel image is neither"):
        load_kernel(mem, path)


# -- hostile images ----------------------------------------------------------------


_SEEDS = [_elf_image(), make_bzimage(bytes(range(256)) * 4, init_size=2 * MiB)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.sampled_from(_SEEDS),
    flips=st.lists(st.tuples(st.integers(0, 1200), st.integers(0, 255)), max_size=8),  # headers
    cut=st.integers(0, 6000),
)
def test_mutated_images_fail_only_with_kernel_load_error(mem: GuestMemory, seed: bytes, flips: list, cut: int) -> None:
    blob = bytearray(seed[: max(cut, 0x210)] if cut < len(seed) else seed)
    for pos, value in flips:
        if pos < len(blob):
            blob[pos] = value
    try:
        kernel = load_kernel_data(mem, bytes(blob))
    except KernelLoadError:
        return
    assert all(mem.check_range(s.guest_addr, s.mem_size) for s in kernel.segments)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0x210, max_size=4096), st.sampled_from(["none", "elf", "bzimage"]))
def test_random_bytes_fail_only_with_kernel_load_error(data: bytes, magic: str) -> None:
    blob = bytearray(data)
    if magic == "elf":
        blob[:7] = b"\x7fELF\x02\x01\x01"
        struct.pack_into("<HH", blob, 16, 2, 62)  # ET_EXEC, x86-64: get past the first checks
    elif magic == "bzimage":
        blob[0x202:0x206] = b"HdrS"
        struct.pack_into("<H", blob, 0x1FE, 0xAA55)
    try:
        parse_kernel(bytes(blob))
    except KernelLoadError:
        pass


# -- initrd --------------------------------------------------------------------


def _kernel(end: int = 20 * MiB, initrd_addr_max: int = DEFAULT_INITRD_ADDR_MAX) -> KernelImage:
    return KernelImage("elf", KERNEL_PADDR, None, (Segment(0, 0, KERNEL_PADDR, end - KERNEL_PADDR),), end,
                       initrd_addr_max=initrd_addr_max)  # fmt: skip


def test_initrd_goes_at_the_top_of_low_ram_page_aligned(mem: GuestMemory, tmp_path: Path) -> None:
    path = tmp_path / "initrd"
    data = bytes(range(251)) * 4001  # not a page multiple
    path.write_bytes(data)
    addr, size = load_initrd(mem, path, _kernel())
    assert size == len(data)
    assert addr % 4096 == 0
    assert addr + size <= 64 * MiB and 64 * MiB - (addr + size) < 4096
    assert mem.read(addr, size) == data


def test_initrd_respects_initrd_addr_max() -> None:
    mem = guest_ram(2 * layout.GiB)
    try:
        assert initrd_address(mem, _kernel(), 5 * MiB) == (0x38000000 - 5 * MiB)
        limited = _kernel(initrd_addr_max=0x0FFFFFFF)
        assert initrd_address(mem, limited, 4096) == 0x10000000 - 4096
    finally:
        mem.close()


def test_initrd_never_overlaps_the_kernel(mem: GuestMemory, tmp_path: Path) -> None:
    path = tmp_path / "initrd"
    path.write_bytes(b"\x01" * (44 * MiB))
    kernel = _kernel(end=20 * MiB + 1)  # kernel ends mid-page: the initrd starts on the next page
    with pytest.raises(KernelLoadError, match="smaller initrd"):
        load_initrd(mem, path, kernel)
    assert initrd_address(mem, kernel, 44 * MiB - 4096) == 20 * MiB + 4096


def test_initrd_too_big_for_the_vm(mem: GuestMemory, tmp_path: Path) -> None:
    path = tmp_path / "initrd"
    path.write_bytes(b"\x01" * (70 * MiB))
    with pytest.raises(KernelLoadError, match=r"is 70 MiB but only 44 MiB fit"):
        load_initrd(mem, path, _kernel())


def test_initrd_empty_or_missing(mem: GuestMemory, tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(KernelLoadError, match="empty"):
        load_initrd(mem, tmp_path / "empty", _kernel())
    with pytest.raises(KernelLoadError, match="cannot read initrd"):
        load_initrd(mem, tmp_path / "nope", _kernel())


# -- command line ------------------------------------------------------------------


def test_cmdline_is_written_nul_terminated(mem: GuestMemory) -> None:
    write_cmdline(mem, "console=ttyS0 reboot=k")
    assert mem.read(layout.CMDLINE_START, 23) == b"console=ttyS0 reboot=k\x00"


def test_cmdline_limits(mem: GuestMemory) -> None:
    write_cmdline(mem, "a" * (layout.CMDLINE_MAX_SIZE - 1))
    assert mem.read_u8(layout.CMDLINE_START + layout.CMDLINE_MAX_SIZE - 1) == 0
    with pytest.raises(BootConfigError, match="longer than the 4095"):
        write_cmdline(mem, "a" * layout.CMDLINE_MAX_SIZE)
    bz = parse_kernel(make_bzimage(b"K" * 512, cmdline_size=255))
    write_cmdline(mem, "b" * 255, kernel=bz)
    with pytest.raises(BootConfigError, match="256 bytes, longer than the 255"):
        write_cmdline(mem, "b" * 256, kernel=bz)
    with pytest.raises(BootConfigError, match="NUL"):
        write_cmdline(mem, "a\x00b")
