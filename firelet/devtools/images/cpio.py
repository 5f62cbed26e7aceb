"""The ``newc`` cpio format the kernel unpacks into its initramfs.

Format: Documentation/driver-api/early-userspace/buffer-format.rst. Each
member is a 110-byte ASCII header ("070701" and 13 eight-digit hex fields),
the NUL-terminated name padded to 4 bytes, then the data padded to 4 bytes;
the archive ends with a member named ``TRAILER!!!``.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable

from firelet.devtools.images.tree import CHARDEV, DIR, FILE, SYMLINK, Entry

NEWC_MAGIC = b"070701"
TRAILER = "TRAILER!!!"
_HEADER_SIZE = 110  # magic (6) + 13 fields x 8 hex digits
_FIELDS = 13


class CpioFormatError(ValueError):
    """The bytes are not a well-formed newc archive."""


def _pad4(length: int) -> int:
    return (4 - length % 4) % 4


def _member(ino: int, mode: int, data: bytes, name: str, rdev: tuple[int, int], nlink: int) -> bytes:
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
    header = NEWC_MAGIC + b"".join(b"%08x" % value for value in fields)
    head = header + encoded
    return head + b"\0" * _pad4(len(head)) + data + b"\0" * _pad4(len(data))


def write_newc(entries: Iterable[Entry]) -> bytes:
    """The archive holding ``entries``, owned by root, with mtime 0 (reproducible)."""
    parts: list[bytes] = []
    for ino, entry in enumerate(entries, start=1):
        nlink = 2 if entry.kind == DIR else 1
        parts.append(_member(ino, entry.mode, entry.data, entry.path, entry.rdev, nlink))
    parts.append(_member(0, 0, b"", TRAILER, (0, 0), 1))
    return b"".join(parts)


def read_newc(archive: bytes) -> list[Entry]:
    """Parse a newc archive back into entries (for checks and tests)."""
    entries: list[Entry] = []
    pos = 0
    while True:
        header = archive[pos:pos + _HEADER_SIZE]
        if len(header) < _HEADER_SIZE or header[:6] != NEWC_MAGIC:
            raise CpioFormatError(f"no newc header at offset {pos}")
        try:
            fields = [int(header[6 + 8 * i:14 + 8 * i], 16) for i in range(_FIELDS)]
        except ValueError:
            raise CpioFormatError(f"bad hex field in the header at offset {pos}") from None
        mode, filesize, rmajor, rminor, namesize = fields[1], fields[6], fields[9], fields[10], fields[11]
        name_at = pos + _HEADER_SIZE
        name = archive[name_at:name_at + namesize].rstrip(b"\0").decode()
        data_at = name_at + namesize + _pad4(_HEADER_SIZE + namesize)
        data = archive[data_at:data_at + filesize]
        if len(data) != filesize:
            raise CpioFormatError(f"member {name!r} is truncated")
        pos = data_at + filesize + _pad4(filesize)
        if name == TRAILER:
            return entries
        entries.append(Entry(path=name, kind=_kind(mode, name), perm=stat.S_IMODE(mode),
                             data=data, rdev=(rmajor, rminor)))


def _kind(mode: int, name: str) -> str:
    for kind, test in ((DIR, stat.S_ISDIR), (FILE, stat.S_ISREG), (SYMLINK, stat.S_ISLNK), (CHARDEV, stat.S_ISCHR)):
        if test(mode):
            return kind
    raise CpioFormatError(f"member {name!r} has an unsupported file type (mode {mode:o})")
