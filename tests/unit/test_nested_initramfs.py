"""The pure-Python newc cpio writer, checked by extracting with the real cpio tool."""

from __future__ import annotations

import gzip
import os
import subprocess
from pathlib import Path

from firelet.devtools.nested import initramfs as cpio


def test_cpio_extracts_files_dirs_and_symlinks(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 3 + b"x"  # odd length exercises the 4-byte padding
    archive = cpio.gzip_cpio([
        cpio.directory("bin"),
        cpio.regular("bin/tool", payload, 0o755),
        cpio.symlink("bin/sh", "tool"),
        cpio.regular("init", b"#!/bin/sh\n", 0o755),
    ])
    out = tmp_path / "root"
    out.mkdir()
    proc = subprocess.run(["cpio", "-idm", "--quiet"], input=gzip.decompress(archive), cwd=out,
                          capture_output=True)
    assert proc.returncode == 0, proc.stderr
    assert (out / "bin/tool").read_bytes() == payload
    assert os.readlink(out / "bin/sh") == "tool"
    assert (out / "bin/tool").stat().st_mode & 0o777 == 0o755
    assert (out / "init").read_bytes() == b"#!/bin/sh\n"


def test_archive_is_deterministic() -> None:
    entries = [cpio.directory("d"), cpio.regular("d/f", b"abc")]
    assert cpio.gzip_cpio(entries) == cpio.gzip_cpio(entries)


def test_newc_layout() -> None:
    raw = cpio.cpio_newc([cpio.regular("f", b"abcde")])
    assert raw.startswith(b"070701") and len(raw) % 4 == 0
    assert b"TRAILER!!!\0" in raw
    # header (110) + "f\0" padded to 112, then 5 data bytes padded to 8
    assert raw[112:117] == b"abcde" and raw[117:120] == b"\0\0\0"


def test_vmlinux_is_found_inside_an_xz_bzimage() -> None:
    import lzma

    from firelet.devtools.nested.outer import extract_vmlinux

    elf = b"\x7fELF" + bytes(range(256)) * 50
    # a setup header, then a decoy that is not xz, then the payload
    image = b"MZ" + b"\0" * 0x200 + b"HdrS" + b"\xfd7zXZ\x00garbage" + lzma.compress(elf, format=lzma.FORMAT_XZ)
    assert extract_vmlinux(image) == elf
    assert extract_vmlinux(b"MZ no payload") is None
