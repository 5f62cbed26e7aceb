"""The rig's initramfs: a gzip'd ``newc`` cpio archive, written in pure Python.

Two archives make one initrd: a cached *base* (busybox and the kernel
modules, the same for every run) and a tiny per-run archive (``/init`` with
this run's nonce, shares and command). Linux unpacks concatenated archives in
order (Documentation/driver-api/early-userspace/buffer-format.rst), so a run
only writes a few kilobytes and appends them to the base.
"""

from __future__ import annotations

import gzip
import io
import stat
from dataclasses import dataclass

# newc header: magic "070701" then 13 eight-digit hex fields (buffer-format.rst).
_NEWC_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One file, directory or symlink in the archive (``data`` is the link target for symlinks)."""

    path: str
    mode: int
    data: bytes = b""


def directory(path: str) -> Entry:
    return Entry(path, stat.S_IFDIR | 0o755)


def regular(path: str, data: bytes, perm: int = 0o644) -> Entry:
    return Entry(path, stat.S_IFREG | perm, data)


def symlink(path: str, target: str) -> Entry:
    return Entry(path, stat.S_IFLNK | 0o777, target.encode())


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _record(ino: int, entry: Entry) -> bytes:
    name = entry.path.lstrip("/").encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (ino, entry.mode, 0, 0, nlink, 0, len(entry.data), 0, 0, 0, 0, len(name), 0)
    header = _NEWC_MAGIC + b"".join(b"%08X" % f for f in fields)
    return header + name + _pad4(len(header) + len(name)) + entry.data + _pad4(len(entry.data))


def cpio_newc(entries: list[Entry]) -> bytes:
    """The uncompressed archive of ``entries`` (parents must come before children)."""
    out = io.BytesIO()
    for ino, entry in enumerate(entries, start=1):
        out.write(_record(ino, entry))
    out.write(_record(0, Entry(_TRAILER, 0)))
    return out.getvalue()


def gzip_cpio(entries: list[Entry], level: int = 6) -> bytes:
    """The archive, gzip'd with a fixed timestamp so that equal inputs give equal bytes."""
    return gzip.compress(cpio_newc(entries), compresslevel=level, mtime=0)
