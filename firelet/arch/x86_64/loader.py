"""Kernel and initrd loading: parse an image into "these bytes go there, enter here", then copy.

Two image kinds are accepted, told apart by their magic:

* an ELF ``vmlinux`` (ELF64, x86-64): every ``PT_LOAD`` goes to its ``p_paddr``,
  the 64-bit entry is ``e_entry``, and a ``XEN_ELFNOTE_PHYS32_ENTRY`` note, if
  present, gives the PVH entry;
* a ``bzImage`` (Linux x86 boot protocol, Documentation/arch/x86/boot.rst): the
  protected-mode kernel goes to 1 MiB and is entered at its 64-bit entry point
  (+0x200, "64-bit BOOT PROTOCOL"); its setup header is kept for the zero page.

A kernel file is untrusted input: every offset and length read from it is
checked before use, and every failure is a :class:`KernelLoadError`.
"""

from __future__ import annotations

import itertools
import mmap
import os
import stat
import struct
from typing import Literal, NamedTuple

from firelet.arch.x86_64 import layout
from firelet.errors import FireletError
from firelet.memory.guest import GuestMemory

PAGE_SIZE = 0x1000

# ELF (System V gABI, "ELF Header" and "Program Header"; x86-64 psABI for EM_X86_64).
_ELF_MAGIC = b"\x7fELF"
_ELFCLASS64 = 2
_ELFDATA2LSB = 1
_ET_EXEC = 2
_EM_X86_64 = 62
_ELF64_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")  # 64 bytes
_ELF64_PHDR = struct.Struct("<IIQQQQQQ")  # 56 bytes
_PT_LOAD = 1
_PT_NOTE = 4
_NOTE_HDR = struct.Struct("<III")  # namesz, descsz, type
# xen/include/public/elfnote.h: the 32-bit PVH entry point (physical address).
_XEN_ELFNOTE_PHYS32_ENTRY = 18
_XEN_NOTE_NAME = b"Xen\x00"

# Setup header offsets in the image == offsets in the zero page (boot.rst, "THE REAL-MODE KERNEL HEADER").
_HDR_START = 0x1F1
_SETUP_SECTS = 0x1F1
_SYSSIZE = 0x1F4
_BOOT_FLAG = 0x1FE
_JUMP = 0x200  # the byte at 0x201 gives the header's end: 0x202 + data[0x201]
_HEADER = 0x202
_VERSION = 0x206
_LOADFLAGS = 0x211
_INITRD_ADDR_MAX = 0x22C
_KERNEL_ALIGNMENT = 0x230
_RELOCATABLE_KERNEL = 0x234
_XLOADFLAGS = 0x236
_CMDLINE_SIZE = 0x238
_PREF_ADDRESS = 0x258
_INIT_SIZE = 0x260
#: struct boot_params puts edd_mbr_sig_buffer at 0x290 (zero-page.rst): the header never reaches past it.
HDR_LIMIT = 0x290

BOOT_FLAG_MAGIC = 0xAA55
HDRS_MAGIC = b"HdrS"
LOADED_HIGH = 0x01  # loadflags bit 0: protected-mode code is loaded at 0x100000
XLF_KERNEL_64 = 0x01  # xloadflags bit 0: the kernel has the legacy 64-bit entry point at 0x200
MIN_PROTOCOL_64 = 0x020C  # xloadflags exists from protocol 2.12
_ENTRY_64_OFFSET = 0x200  # boot.rst "64-bit BOOT PROTOCOL": entry is load address + 0x200
_SECTOR = 512
_DEFAULT_SETUP_SECTS = 4  # boot.rst: "If this field is 0, the real value is 4"
#: boot.rst, initrd_addr_max: "for boot protocols 2.02 or earlier, the maximum is 0x37FFFFFF".
DEFAULT_INITRD_ADDR_MAX = 0x37FFFFFF
#: An ELF kernel states no limit; x86 Linux's COMMAND_LINE_SIZE (asm/setup.h) is 2048 with the NUL.
ELF_CMDLINE_MAX = 2047


class KernelLoadError(FireletError):
    """The kernel or initrd image is not usable (not a kernel, truncated, too big for the VM)."""


class BootConfigError(FireletError):
    """The boot configuration (command line, initrd placement) cannot be given to the guest."""


class Segment(NamedTuple):
    """``file_size`` bytes from ``file_offset`` go to ``guest_addr``; the rest up to ``mem_size`` is zero."""

    file_offset: int
    file_size: int
    guest_addr: int
    mem_size: int


class KernelImage(NamedTuple):
    """What a parsed kernel needs from the boot code (addresses are guest-physical)."""

    kind: Literal["elf", "bzimage"]
    entry: int
    pvh_entry: int | None
    segments: tuple[Segment, ...]
    #: First address past everything the kernel occupies while it starts (bss, init_size).
    end: int
    #: bzImage setup header bytes (zero-page offset 0x1f1 onwards); None for ELF.
    setup_header: bytes | None = None
    initrd_addr_max: int = DEFAULT_INITRD_ADDR_MAX
    #: Longest command line the kernel accepts, without the terminating NUL.
    cmdline_max: int = ELF_CMDLINE_MAX
    kernel_alignment: int = 0x1000000


def parse_kernel(data: bytes | bytearray | memoryview | mmap.mmap) -> KernelImage:
    """Parse an ELF vmlinux or a bzImage held in ``data``; raises KernelLoadError only."""
    if len(data) >= 4 and data[:4] == _ELF_MAGIC:
        return _parse_elf(data)
    if len(data) >= _HEADER + 4 and data[_HEADER : _HEADER + 4] == HDRS_MAGIC:
        return _parse_bzimage(data)
    raise KernelLoadError("kernel image is neither an ELF vmlinux nor a bzImage; pass a Linux kernel")


def load_kernel_data(mem: GuestMemory, data: bytes | bytearray | memoryview | mmap.mmap) -> KernelImage:
    """Parse ``data`` and copy its segments into guest memory."""
    image = parse_kernel(data)
    _check_fits(mem, image)
    with memoryview(data) as whole:
        for seg in image.segments:
            mem.write(seg.guest_addr, whole[seg.file_offset : seg.file_offset + seg.file_size])
            _zero_tail(mem, seg)
    return image


def load_kernel(mem: GuestMemory, path: str | os.PathLike[str], *, fresh_memory: bool = False) -> KernelImage:
    """Load the kernel at ``path`` (ELF vmlinux or bzImage) into guest memory.

    Only the headers are read through a mapping; the segments are read from
    the file straight into guest RAM (one copy, no page faults on the file).
    ``fresh_memory``: ``mem`` was just mapped, so it is all zero and the bss needs no
    zeroing. The builder loads on a helper thread while its own thread imports, and
    that write (1.2 MiB for the project's kernel) is Python holding the GIL: in the rig
    it waited 5-150 ms for it, while the reads release the GIL.
    """
    with _open_image(path, "kernel") as (fd, size):
        if size == 0:
            raise KernelLoadError(f"kernel image {path} is empty; pass a Linux kernel")
        try:
            data = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
        except OSError as exc:
            raise KernelLoadError(f"cannot map kernel image {path}: {exc.strerror}") from None
        try:
            with data:
                image = parse_kernel(data)
            _check_fits(mem, image)
        except KernelLoadError as exc:
            raise KernelLoadError(f"{path}: {exc}") from None
        for seg in image.segments:
            with mem.view(seg.guest_addr, seg.file_size) as target:
                _read_into(fd, target, seg.file_offset, f"kernel image {path}")
            if not fresh_memory:
                _zero_tail(mem, seg)
        return image


def _check_fits(mem: GuestMemory, image: KernelImage) -> None:
    start = min(seg.guest_addr for seg in image.segments)
    if not mem.check_range(start, image.end - start):
        need_mib = -(-image.end // layout.MiB)
        raise KernelLoadError(
            f"kernel needs guest memory {start:#x}..{image.end:#x}, which does not fit in the VM's "
            f"{mem.size >> 20} MiB of RAM below the MMIO gap; set machine-config.mem_size_mib to "
            f"more than {need_mib} (the kernel also needs free RAM to run)"
        )


def _zero_tail(mem: GuestMemory, seg: Segment) -> None:
    """Zero the part of a segment past its file bytes (ELF p_memsz > p_filesz: bss)."""
    tail = seg.mem_size - seg.file_size
    if tail:
        mem.view(seg.guest_addr + seg.file_size, tail)[:] = bytes(tail)


def _read_into(fd: int, target: memoryview, offset: int, what: str) -> None:
    """Fill ``target`` from the file at ``offset`` (short reads continued)."""
    done, size = 0, len(target)
    while done < size:
        n = os.preadv(fd, [target[done:]], offset + done)
        if n <= 0:
            raise KernelLoadError(f"{what} shrank while being read; try again")
        done += n


def load_initrd(mem: GuestMemory, path: str | os.PathLike[str], kernel: KernelImage) -> tuple[int, int]:
    """Copy the initrd as high as the kernel allows in low RAM, page-aligned; returns ``(addr, size)``.

    boot.rst ("initrd_addr_max"): the whole initrd must lie at or below that
    address; it must also stay in the RAM below the MMIO gap and above the kernel.
    """
    with _open_image(path, "initrd") as (fd, size):
        if size == 0:
            raise KernelLoadError(f"initrd {path} is empty; pass a cpio archive or leave it out")
        addr = initrd_address(mem, kernel, size)
        if addr is None:
            room = max(0, _low_ram_end(mem, kernel) - _align_up(kernel.end, PAGE_SIZE))
            raise KernelLoadError(
                f"initrd {path} is {size >> 20} MiB but only {room >> 20} MiB fit between the kernel "
                "and the end of low RAM; give the VM more memory or use a smaller initrd"
            )
        with mem.view(addr, size) as target:
            _read_into(fd, target, 0, f"initrd {path}")
    return addr, size


def initrd_address(mem: GuestMemory, kernel: KernelImage, size: int) -> int | None:
    """Where an initrd of ``size`` bytes goes, or None if it cannot fit."""
    if size <= 0:
        return None
    addr = (_low_ram_end(mem, kernel) - size) & ~(PAGE_SIZE - 1)
    if addr < _align_up(kernel.end, PAGE_SIZE) or not mem.check_range(addr, size):
        return None
    return addr


def write_cmdline(mem: GuestMemory, cmdline: str, *, kernel: KernelImage | None = None) -> None:
    """Write the NUL-terminated command line at CMDLINE_START, checking it fits the kernel and our area."""
    data = cmdline.encode()
    if b"\x00" in data:
        raise BootConfigError("kernel command line contains a NUL character; remove it")
    limit = layout.CMDLINE_MAX_SIZE - 1 if kernel is None else min(kernel.cmdline_max, layout.CMDLINE_MAX_SIZE - 1)
    if len(data) > limit:
        raise BootConfigError(
            f"kernel command line is {len(data)} bytes, longer than the {limit} the kernel accepts; shorten it"
        )
    mem.write(layout.CMDLINE_START, data + b"\x00")


def _low_ram_end(mem: GuestMemory, kernel: KernelImage) -> int:
    """One past the highest byte an initrd may use: the kernel's limit, the low RAM end, the gap."""
    first = mem.regions[0]
    low_end = min(first.end, layout.MMIO_GAP_START) if first.guest_addr == 0 else 0
    return min(kernel.initrd_addr_max + 1, low_end)


def _align_up(value: int, align: int) -> int:
    return (value + align - 1) & ~(align - 1)


class _open_image:
    """Open a file for reading, turning OS errors into one-line KernelLoadErrors."""

    def __init__(self, path: str | os.PathLike[str], what: str) -> None:
        self.path, self.what, self.fd = os.fspath(path), what, -1

    def __enter__(self) -> tuple[int, int]:
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            info = os.fstat(self.fd)
        except OSError as exc:
            if self.fd >= 0:
                os.close(self.fd)
            raise KernelLoadError(f"cannot read {self.what} {self.path}: {exc.strerror}") from None
        if not stat.S_ISREG(info.st_mode):
            os.close(self.fd)
            raise KernelLoadError(f"{self.what} {self.path} is not a regular file; pass the image file itself")
        return self.fd, info.st_size

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


# -- ELF -----------------------------------------------------------------------


def _parse_elf(data: bytes | bytearray | memoryview | mmap.mmap) -> KernelImage:
    if len(data) < _ELF64_EHDR.size:
        raise KernelLoadError("ELF kernel is truncated (shorter than its header)")
    ident, e_type, machine, _ver, entry, phoff, _shoff, _flags, _ehsize, phentsize, phnum, *_ = (
        _ELF64_EHDR.unpack_from(data, 0)
    )
    if ident[4] != _ELFCLASS64 or ident[5] != _ELFDATA2LSB or machine != _EM_X86_64:
        raise KernelLoadError("ELF kernel is not a little-endian x86-64 ELF64 image; pass an x86-64 vmlinux")
    if e_type != _ET_EXEC:
        raise KernelLoadError(f"ELF kernel has type {e_type}, not an executable (ET_EXEC); pass a vmlinux")
    if phentsize < _ELF64_PHDR.size or phnum == 0:
        raise KernelLoadError("ELF kernel has no usable program headers")
    if phoff + phentsize * phnum > len(data):
        raise KernelLoadError("ELF kernel is truncated (program headers run past the end of the file)")
    segments: list[Segment] = []
    pvh_entry: int | None = None
    for i in range(phnum):
        p_type, _pf, offset, _vaddr, paddr, filesz, memsz, _align = _ELF64_PHDR.unpack_from(
            data, phoff + i * phentsize
        )
        if offset + filesz > len(data):
            raise KernelLoadError(f"ELF kernel is truncated (segment {i} runs past the end of the file)")
        if p_type == _PT_NOTE:
            pvh_entry = _find_pvh_note(data, offset, filesz) if pvh_entry is None else pvh_entry
        if p_type != _PT_LOAD or memsz == 0:
            continue
        if filesz > memsz:
            raise KernelLoadError(f"ELF kernel segment {i} has more file bytes than memory bytes")
        if paddr < layout.HIMEM_START or paddr + memsz > layout.MAX_MEM_SIZE:
            raise KernelLoadError(
                f"ELF kernel segment {i} wants guest address {paddr:#x}, outside 1 MiB..RAM; "
                "pass a kernel linked for a physical load address of 1 MiB or more"
            )
        segments.append(Segment(offset, filesz, paddr, memsz))
    if not segments:
        raise KernelLoadError("ELF kernel has no loadable segments")
    _check_disjoint(segments)
    for name, addr in (("entry point", entry), ("PVH entry point", pvh_entry)):
        if addr is not None and not any(s.guest_addr <= addr < s.guest_addr + s.mem_size for s in segments):
            raise KernelLoadError(f"ELF kernel {name} {addr:#x} is outside its loaded segments")
    end = max(s.guest_addr + s.mem_size for s in segments)
    return KernelImage("elf", entry, pvh_entry, tuple(segments), end)


def _check_disjoint(segments: list[Segment]) -> None:
    ordered = sorted(segments, key=lambda s: s.guest_addr)
    for prev, cur in itertools.pairwise(ordered):
        if cur.guest_addr < prev.guest_addr + prev.mem_size:
            raise KernelLoadError(f"ELF kernel segments overlap at {cur.guest_addr:#x}")


def _find_pvh_note(data: bytes | bytearray | memoryview | mmap.mmap, start: int, size: int) -> int | None:
    """The XEN_ELFNOTE_PHYS32_ENTRY value in a PT_NOTE segment (gABI "Note Section"), if any."""
    pos, end = start, start + size
    while pos + _NOTE_HDR.size <= end:
        namesz, descsz, n_type = _NOTE_HDR.unpack_from(data, pos)
        name_at = pos + _NOTE_HDR.size
        desc_at = name_at + _align_up(namesz, 4)
        pos = desc_at + _align_up(descsz, 4)
        if pos > end:
            raise KernelLoadError("ELF kernel has a truncated note")
        if n_type == _XEN_ELFNOTE_PHYS32_ENTRY and data[name_at : name_at + namesz] == _XEN_NOTE_NAME:
            if descsz not in (4, 8):
                raise KernelLoadError(f"ELF kernel PVH entry note has a {descsz}-byte value, expected 4 or 8")
            value = int.from_bytes(data[desc_at : desc_at + descsz], "little")
            if value >= 1 << 32:
                raise KernelLoadError(f"ELF kernel PVH entry {value:#x} is above 4 GiB")
            return value
    return None


# -- bzImage -------------------------------------------------------------------


def _parse_bzimage(data: bytes | bytearray | memoryview | mmap.mmap) -> KernelImage:
    hdr_end = _HEADER + data[_JUMP + 1]
    if hdr_end > len(data):
        raise KernelLoadError("bzImage is truncated (setup header runs past the end of the file)")

    def field(offset: int, fmt: str) -> int:
        if offset + struct.calcsize(fmt) > hdr_end:
            raise KernelLoadError(f"bzImage setup header is too short (ends at {hdr_end:#x}); kernel too old")
        return struct.unpack_from(fmt, data, offset)[0]

    if field(_BOOT_FLAG, "<H") != BOOT_FLAG_MAGIC:
        raise KernelLoadError("bzImage has no 0xAA55 boot flag; the image is damaged")
    version = field(_VERSION, "<H")
    if version < MIN_PROTOCOL_64:
        raise KernelLoadError(
            f"bzImage uses boot protocol {version >> 8}.{version & 0xFF:02d}; firelet needs 2.12 or newer"
        )
    if not field(_LOADFLAGS, "<B") & LOADED_HIGH:
        raise KernelLoadError("bzImage is a zImage (not LOADED_HIGH); pass a bzImage or vmlinux")
    if not field(_XLOADFLAGS, "<H") & XLF_KERNEL_64:
        raise KernelLoadError("bzImage has no 64-bit entry point (XLF_KERNEL_64); pass a 64-bit kernel")
    setup_sects = field(_SETUP_SECTS, "<B") or _DEFAULT_SETUP_SECTS
    pm_offset = (setup_sects + 1) * _SECTOR
    pm_size = field(_SYSSIZE, "<I") * 16  # syssize counts 16-byte paragraphs
    if pm_size == 0 or pm_offset + pm_size > len(data):
        raise KernelLoadError("bzImage is truncated (protected-mode kernel runs past the end of the file)")
    alignment = field(_KERNEL_ALIGNMENT, "<I")
    runtime_start = _runtime_start(field(_RELOCATABLE_KERNEL, "<B"), field(_PREF_ADDRESS, "<Q"), alignment)
    # boot.rst "init_size": memory the kernel needs from its runtime start before it reads the memory map.
    end = max(layout.HIMEM_START + pm_size, runtime_start + field(_INIT_SIZE, "<I"))
    cmdline_max = min(field(_CMDLINE_SIZE, "<I"), layout.CMDLINE_MAX_SIZE - 1)
    return KernelImage(
        "bzimage",
        layout.HIMEM_START + _ENTRY_64_OFFSET,
        None,
        (Segment(pm_offset, pm_size, layout.HIMEM_START, pm_size),),
        end,
        setup_header=bytes(data[_HDR_START : min(hdr_end, HDR_LIMIT)]),
        initrd_addr_max=field(_INITRD_ADDR_MAX, "<I"),
        cmdline_max=cmdline_max,
        kernel_alignment=alignment,
    )


def _runtime_start(relocatable: int, pref_address: int, alignment: int) -> int:
    """Where the kernel decompresses itself and runs (boot.rst, "init_size", the runtime start algorithm)."""
    if not relocatable:
        return pref_address
    load = max(layout.HIMEM_START, pref_address)
    return -(-load // alignment) * alignment if alignment else load
