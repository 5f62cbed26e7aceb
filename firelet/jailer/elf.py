"""Which files an ELF program needs to start: its program interpreter and shared libraries.

The jail exposes exactly these, so the reading is done here (a few hundred bytes
per file, no ``ldd`` process): PT_INTERP, and DT_NEEDED/DT_RUNPATH from the dynamic
section, resolved the way the dynamic loader resolves them (ld.so(8), "Rpath token
expansion" for ``$ORIGIN``; then the system directories).
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterable

# elf(5): ELF64 little-endian only (the project runs on x86_64).
_PT_LOAD, _PT_DYNAMIC, _PT_INTERP = 1, 2, 3
_DT_NEEDED, _DT_STRTAB, _DT_RPATH, _DT_RUNPATH = 1, 5, 15, 29
#: Where the loader looks last (Debian's multiarch layout, then the generic ones).
SYSTEM_LIB_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib")


class NotElf(ValueError):
    pass


def read_dynamic(path: str) -> tuple[str | None, list[str], list[str]]:
    """(program interpreter, DT_NEEDED names, RUNPATH/RPATH directories) of an ELF64 file."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size < 64:
            raise NotElf(f"{path}: too short for an ELF file")
        # Mapped, not read: only the header pages are touched (some extension modules are megabytes).
        with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as data:
            return _parse(path, data)


def _parse(path: str, data: mmap.mmap) -> tuple[str | None, list[str], list[str]]:
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise NotElf(f"{path}: not a little-endian ELF64 file")
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    interp, dynamic, loads = None, None, []
    for i in range(phnum):
        p_type, _flags, offset, vaddr, _paddr, filesz, _memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", data, phoff + i * phentsize)
        if p_type == _PT_INTERP:
            interp = bytes(data[offset:offset + filesz]).rstrip(b"\0").decode()
        elif p_type == _PT_DYNAMIC:
            dynamic = (offset, filesz)
        elif p_type == _PT_LOAD:
            loads.append((vaddr, offset, filesz))
    if dynamic is None:
        return interp, [], []
    entries = []
    off, size = dynamic
    for pos in range(off, off + size, 16):
        tag, val = struct.unpack_from("<qQ", data, pos)
        if tag == 0:
            break
        entries.append((tag, val))
    strtab_vaddr = next((v for t, v in entries if t == _DT_STRTAB), None)
    if strtab_vaddr is None:
        return interp, [], []
    strtab = _file_offset(loads, strtab_vaddr)

    def string(at: int) -> str:
        end = data.find(b"\0", strtab + at)
        return bytes(data[strtab + at:end]).decode()

    needed = [string(v) for t, v in entries if t == _DT_NEEDED]
    paths = [d for t, v in entries if t in (_DT_RUNPATH, _DT_RPATH) for d in string(v).split(":") if d]
    return interp, needed, paths


def _file_offset(loads: list[tuple[int, int, int]], vaddr: int) -> int:
    for seg_vaddr, seg_off, seg_size in loads:
        if seg_vaddr <= vaddr < seg_vaddr + seg_size:
            return vaddr - seg_vaddr + seg_off
    raise NotElf(f"address {vaddr:#x} is in no loaded segment")


def closure(files: Iterable[str]) -> set[str]:
    """Every program interpreter and shared library that ``files`` need, transitively (paths as found)."""
    found: set[str] = set()
    todo = list(files)
    seen: set[str] = set()
    while todo:
        path = todo.pop()
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        try:
            interp, needed, runpath = read_dynamic(real)
        except (NotElf, OSError, struct.error, IndexError, ValueError):
            continue  # not a loadable ELF (a script, a stub): nothing it links
        origin = os.path.dirname(real)
        dirs = [d.replace("$ORIGIN", origin).replace("${ORIGIN}", origin) for d in runpath]
        if interp:
            found.add(interp)
            todo.append(interp)
        for name in needed:
            lib = _resolve(name, dirs) if "/" not in name else name
            if lib is not None:
                found.add(lib)
                todo.append(lib)
    return found


def _resolve(name: str, dirs: list[str]) -> str | None:
    for d in (*dirs, *SYSTEM_LIB_DIRS):
        candidate = os.path.join(d, name)
        if os.path.exists(candidate):
            return candidate
    return None
