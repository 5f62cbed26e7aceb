"""Where a fleet member's files go, and how they go away once it ended.

An unjailed member's files live in its own directory and are used by their host
paths; a jailed member's are laid in its jail's root (hard links or copies owned by
the jail's user) and the VMM sees them as ``/<name>``. What the fleet makes in a jail
is written down so that :func:`tidy` removes exactly that, whichever command stops it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any

from firelet.errors import UsageError
from firelet.jailer.flags import DEFAULT_CHROOT_BASE

#: Each member's files, inside ``DIR/<id>/`` (or its jail's root).
API_SOCK, CONFIG, LOG, METRICS, CONSOLE, STDERR = ("api.sock", "config.json", "vmm.log", "metrics.json",
                                                   "console.log", "stderr.log")
#: What a drive copy's name starts with: the private copies, removed when the member ends.
DRIVE_PREFIX = "drive-"
#: Read/write size of a drive copy where copy_file_range cannot.
_CHUNK = 1 << 20


class Placement:
    """Where an unjailed member's files go: its own directory, paths as the host sees them."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def seen(self, name: str) -> str:
        """The path the VMM is given for the member's file ``name``."""
        return str(self.dir / name)

    def shared(self, source: str, name: str) -> str:
        """A file the VMM only reads (kernel, read-only drive): used in place, shared by the members."""
        return source

    def private(self, source: str, name: str) -> str:
        """A writable drive: the member's own sparse copy."""
        sparse_copy(source, self.dir / name)
        return self.seen(name)

    def writable(self, name: str) -> str:
        """An empty file the VMM writes (log, metrics, serial output)."""
        (self.dir / name).touch(mode=0o600)
        return self.seen(name)

    def write(self, name: str, text: str) -> None:
        (self.dir / name).write_text(text)


class JailPlacement(Placement):
    """A jailed member's files: in the jail's root, owned by its uid where written, seen as ``/<name>``.

    What the fleet makes is written down (``DIR/<id>/jail.json``) so that :func:`tidy`
    removes exactly that once the member ended, whichever command stops it.
    """

    def __init__(self, member: Any, jail: dict[str, Any]) -> None:
        from firelet.jailer import layout
        from firelet.launcher.jail import EXEC_NAME

        root = Path(layout.jail_for(jail.get("chroot_base_dir") or DEFAULT_CHROOT_BASE, EXEC_NAME, member.id).root)
        if root.exists():
            raise UsageError(f"jail {root} exists: a microVM with this id runs there, or it was left behind; "
                             "remove it or use another --prefix")
        made = [p for p in [root, *root.parents] if not p.exists()]
        for path in reversed(made):
            path.mkdir(mode=0o755)
        _write_record(member.dir, {"root": str(root), "made": [str(p) for p in made[:2]]})  # root, <id>
        if made[2:]:  # <base>/firelet-vmm and up: shared by the members, the last one out removes them
            shared = member.dir.parent / _SHARED_RECORD
            known = json.loads(shared.read_text()) if shared.exists() else []
            shared.write_text(json.dumps(known + [str(p) for p in made[2:]]))
        super().__init__(root)
        member.root = root
        self.uid, self.gid = int(jail["uid"]), int(jail["gid"])

    def seen(self, name: str) -> str:
        return f"/{name}"

    def shared(self, source: str, name: str) -> str:
        """Hard-linked into the jail when the jailed user may read it and one filesystem holds both, else copied."""
        target = self.dir / name
        if os.stat(source).st_mode & 0o004:
            try:
                os.link(source, target)
                return self.seen(name)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM):
                    raise
        sparse_copy(source, target)
        os.chown(target, self.uid, self.gid)
        return self.seen(name)

    def private(self, source: str, name: str) -> str:
        super().private(source, name)
        os.chown(self.dir / name, self.uid, self.gid)
        return self.seen(name)

    def writable(self, name: str) -> str:
        super().writable(name)
        os.chown(self.dir / name, self.uid, self.gid)
        return self.seen(name)

    def write(self, name: str, text: str) -> None:
        super().write(name, text)
        os.chmod(self.dir / name, 0o644)


JAIL_RECORD = "jail.json"
#: In the fleet's directory: the jails' parent directories the fleet made (deepest first).
_SHARED_RECORD = "jail-dirs.json"


def _write_record(member_dir: Path, record: dict[str, Any]) -> None:
    (member_dir / JAIL_RECORD).write_text(json.dumps(record))


def tidy(member_dir: Path) -> None:
    """After a member ended: its API socket (left if it was killed) and its private drive copies go. A jailed
    member's config, log and metrics move here from its jail; the rest the fleet laid there goes, and the
    jail's directories the fleet made."""
    if not member_dir.is_dir():
        return
    for path in [member_dir / API_SOCK, *member_dir.glob(f"{DRIVE_PREFIX}*")]:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    try:
        record = json.loads((member_dir / JAIL_RECORD).read_text())
    except (OSError, ValueError):
        return
    root = Path(record["root"])
    if root.is_dir():
        for name in (CONFIG, LOG, METRICS):  # kept beside the console, as an unjailed member's are
            with contextlib.suppress(FileNotFoundError):
                shutil.move(root / name, member_dir / name)
        with contextlib.suppress(FileNotFoundError), open(root / CONSOLE, "rb") as serial, \
                open(member_dir / CONSOLE, "ab") as console:  # the config's serial_out_path, in the jail
            shutil.copyfileobj(serial, console)
        for entry in os.scandir(root):
            if not entry.is_dir(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
    _remove_empty(record["made"])
    (member_dir / JAIL_RECORD).unlink()
    shared = member_dir.parent / _SHARED_RECORD
    with contextlib.suppress(FileNotFoundError, ValueError):
        left = _remove_empty(json.loads(shared.read_text()))
        if left:
            shared.write_text(json.dumps(left))
        else:
            shared.unlink()


def _remove_empty(dirs: list[str]) -> list[str]:
    """Remove each directory (deepest first) that is empty; those that still hold something."""
    left = []
    for path in dirs:
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError:
            left.append(path)
    return left


def _copy_extent(src: int, dst: int, start: int, end: int) -> None:
    """Bytes [start, end) to the same offsets: copy_file_range (a reflink where the filesystem can), else read/write."""
    try:
        while start < end:
            copied = os.copy_file_range(src, dst, end - start, start, start)
            if copied == 0:
                return
            start += copied
        return
    except OSError as exc:  # across filesystems before Linux 5.19, or one that cannot (9p, FUSE)
        if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
    while start < end:
        chunk = os.pread(src, min(_CHUNK, end - start), start)
        if not chunk:
            return
        os.pwrite(dst, chunk, start)
        start += len(chunk)


def sparse_copy(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Copy a disk image, leaving its holes holes (SEEK_DATA/SEEK_HOLE, copy_file_range)."""
    with open(source, "rb") as src, open(target, "xb") as dst:
        size = os.fstat(src.fileno()).st_size
        offset = 0
        while offset < size:
            try:
                start = os.lseek(src.fileno(), offset, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            end = os.lseek(src.fileno(), start, os.SEEK_HOLE)
            _copy_extent(src.fileno(), dst.fileno(), start, end)
            offset = end
        dst.truncate(size)
