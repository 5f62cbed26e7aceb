"""The rig's initramfs: gzip'd ``newc`` cpio archives built from firelet's image tree.

Two archives make one initrd: a cached *base* (busybox and the kernel
modules, the same for every run) and a tiny per-run archive (``/init`` with
this run's nonce, shares and command). Linux unpacks concatenated archives in
order (Documentation/driver-api/early-userspace/buffer-format.rst), so a run
only writes a few kilobytes and appends them to the base. The cpio writer is
the guest images' (:mod:`firelet.devtools.images.cpio`).
"""

from __future__ import annotations

import gzip

from firelet.devtools.images.cpio import write_newc
from firelet.devtools.images.tree import DIR, FILE, SYMLINK, Entry


def directory(path: str) -> Entry:
    return Entry(path, DIR, 0o755)


def regular(path: str, data: bytes, perm: int = 0o644) -> Entry:
    return Entry(path, FILE, perm, data)


def symlink(path: str, target: str) -> Entry:
    return Entry(path, SYMLINK, 0o777, target.encode())


def cpio_newc(entries: list[Entry]) -> bytes:
    """The uncompressed archive of ``entries`` (parents must come before children)."""
    return write_newc(entries)


def gzip_cpio(entries: list[Entry], level: int = 6) -> bytes:
    """The archive, gzip'd with a fixed timestamp so that equal inputs give equal bytes."""
    return gzip.compress(cpio_newc(entries), compresslevel=level, mtime=0)
