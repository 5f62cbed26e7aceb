"""A tiny ELF "kernel": a few instructions that this host's /dev/kvm runs, where Linux cannot boot.

The host's /dev/kvm is paravirtual and emulates guest code slowly, so the tests and
the host benchmarks boot a handful of instructions loaded like a vmlinux (one PT_LOAD
segment at :data:`ENTRY`, optionally a PVH note) and entered by the VMM's real boot
path. :data:`RESET_CODE` ends the VM at once: its one port write is a CPU reset through
the i8042, after which firelet-vmm exits with status 0.
"""

from __future__ import annotations

import struct

#: Where the segment is loaded and entered (16 MiB: above the boot structures, inside 64 MiB).
ENTRY = 0x1000000
#: The guest's only port write resets the CPU (i8042 command 0xFE on port 0x64), then it halts.
RESET_CODE = bytes.fromhex(
    "b0fe"  # mov al, 0xfe
    "e664"  # out 0x64, al   ; i8042: pulse the CPU reset line
    "f4"  # hlt
    "ebfd"  # jmp hlt
)

# ELF64 (System V gABI): header 64 bytes, program header 56 bytes.
_EHDR_SIZE, _PHDR_SIZE = 64, 56
_PT_LOAD, _PT_NOTE = 1, 4
_PF_R_X, _PF_R = 5, 4
_ET_EXEC, _EM_X86_64 = 2, 62
_XEN_ELFNOTE_PHYS32_ENTRY = 18  # xen/include/public/elfnote.h: the PVH entry point


def elf(code: bytes, *, pvh_offset: int | None = None) -> bytes:
    """An x86-64 ELF executable whose one segment is ``code`` at :data:`ENTRY` (64 bytes of bss after it).

    With ``pvh_offset`` it also carries a Xen PVH note entering at ``ENTRY + pvh_offset``.
    """
    notes = b""
    if pvh_offset is not None:
        name_size, desc_size = 4, 4
        notes = struct.pack("<III4sI", name_size, desc_size, _XEN_ELFNOTE_PHYS32_ENTRY, b"Xen", ENTRY + pvh_offset)
    nph = 2 if notes else 1
    data_at = _EHDR_SIZE + _PHDR_SIZE * nph
    phdrs = struct.pack("<IIQQQQQQ", _PT_LOAD, _PF_R_X, data_at, ENTRY, ENTRY, len(code), len(code) + 64, 0x1000)
    if notes:
        phdrs += struct.pack("<IIQQQQQQ", _PT_NOTE, _PF_R, data_at + len(code), 0, 0, len(notes), len(notes), 4)
    ident = b"\x7fELF\x02\x01\x01" + bytes(9)  # 64-bit, little-endian, version 1, System V
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", ident, _ET_EXEC, _EM_X86_64, 1, ENTRY, _EHDR_SIZE, 0, 0, _EHDR_SIZE,
                       _PHDR_SIZE, nph, 64, 0, 0)
    return ehdr + phdrs + code + notes
