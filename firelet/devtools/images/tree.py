"""A guest root tree as data, written out as a directory or a cpio archive.

The same list of entries feeds both root filesystems: ``mkfs.ext4 -d`` reads
it from a staging directory, the initramfs is a ``newc`` cpio written
straight from it. Keeping the tree as data means device nodes reach the
initramfs even when the builder is not root (a cpio header is just bytes).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

DIR, FILE, SYMLINK, CHARDEV = "dir", "file", "symlink", "chardev"

_KIND_BITS = {DIR: stat.S_IFDIR, FILE: stat.S_IFREG, SYMLINK: stat.S_IFLNK, CHARDEV: stat.S_IFCHR}


@dataclass(frozen=True)
class Entry:
    """One path in the guest root.

    ``path`` is relative to the root, ``/``-separated, with no leading ``/``.
    ``data`` is a file's contents or a symlink's target; ``rdev`` a device's
    (major, minor).
    """

    path: str
    kind: str
    perm: int = 0o755
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)

    @property
    def mode(self) -> int:
        """The full ``st_mode``: file type bits plus permissions."""
        return _KIND_BITS[self.kind] | self.perm


def stage(entries: list[Entry], root: Path) -> list[str]:
    """Create ``entries`` under ``root``; return the paths that had to be skipped.

    Device nodes need root (``mknod``); without it they are skipped and the
    guest's devtmpfs provides them instead.
    """
    skipped: list[str] = []
    for entry in entries:
        target = root / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        if entry.kind == DIR:
            target.mkdir(exist_ok=True)
            os.chmod(target, entry.perm)
        elif entry.kind == FILE:
            target.write_bytes(entry.data)
            os.chmod(target, entry.perm)
        elif entry.kind == SYMLINK:
            os.symlink(entry.data.decode(), target)
        elif entry.kind == CHARDEV:
            try:
                os.mknod(target, entry.mode, os.makedev(*entry.rdev))
                os.chmod(target, entry.perm)  # mknod applies the umask
            except PermissionError:
                skipped.append(entry.path)
        else:
            raise ValueError(f"unknown entry kind {entry.kind!r}")
    return skipped
