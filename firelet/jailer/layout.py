"""The jail on the host: ``<chroot-base>/<exec-file name>/<id>/root``, as Firecracker lays it out.

The host side holds only what must outlive the jail's mount namespace or be
seen from outside: the root directory (the user links the kernel and drives into
it, the VMM makes its API socket in it), the mount points of the read-only
runtime and ``/dev``, ``/run`` for the default API socket, and the pid file.
Everything made here is registered on the cleanup stack; a jail that already
shows a jailer's marks is refused, since another VM with that id may be using it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass

from firelet.errors import FireletError


class JailError(FireletError):
    """The jail's directories could not be prepared."""


@dataclass(frozen=True)
class Jail:
    base: str  # <chroot-base>/<exec name>/<id>
    root: str  # base/root: "/" as the VMM sees it
    exec_name: str

    @property
    def pid_file(self) -> str:
        return os.path.join(self.root, f"{self.exec_name}.pid")  # jailer.md: <exec_file_name>.pid in the root


def jail_for(chroot_base: str, exec_name: str, vm_id: str) -> Jail:
    base = os.path.join(os.path.abspath(chroot_base), exec_name, vm_id)
    return Jail(base=base, root=os.path.join(base, "root"), exec_name=exec_name)


def prepare(jail: Jail, uid: int, gid: int, top_level: dict[str, str | None],
            cleanup: contextlib.ExitStack) -> None:
    """Make the root and its mount points, owned as Firecracker's jail is; undo on ``cleanup``.

    ``top_level`` names the first path components of the read-only runtime: a
    directory becomes a mount point, a symlink is recreated as on the host.
    """
    for mark in ("dev", f"{jail.exec_name}.pid"):
        if os.path.lexists(os.path.join(jail.root, mark)):
            raise JailError(f"jail {jail.root} exists and holds {mark}: a VM with this id runs, "
                            "or its jail was left behind; remove it or pick another --id")
    _make_dirs(jail.root, cleanup)
    _own(jail.root, uid, gid, cleanup)  # jailer.md: the VMM can create its API socket in the root
    _make_dir(os.path.join(jail.root, "dev"), cleanup)
    run = os.path.join(jail.root, "run")
    if not os.path.lexists(run):  # the default --api-sock is /run/firecracker.socket
        _make_dir(run, cleanup)
        os.chown(run, uid, gid)
        cleanup.callback(_remove_sockets, run)  # a killed VMM leaves its API socket: useless once it is gone
    for name, link in sorted(top_level.items()):
        path = os.path.join(jail.root, name)
        if name in ("dev", "run") or os.path.lexists(path):
            if link is None and os.path.isdir(path) and not os.path.islink(path):
                continue  # already a directory (the user's): it will be covered by the runtime's mount
            raise JailError(f"jail {jail.root}: {name} is in the way of the runtime's {'symlink' if link else 'mount'}")
        if link is None:
            _make_dir(path, cleanup)
        else:
            os.symlink(link, path)
            cleanup.callback(_remove, path)


def _make_dirs(path: str, cleanup: contextlib.ExitStack) -> None:
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for p in reversed(missing):
        _make_dir(p, cleanup)


def _make_dir(path: str, cleanup: contextlib.ExitStack) -> None:
    try:
        os.mkdir(path, 0o755)
    except OSError as exc:
        raise JailError(f"jail: cannot make {path}: {exc.strerror}") from None
    cleanup.callback(_rmdir_if_empty, path)


def _own(path: str, uid: int, gid: int, cleanup: contextlib.ExitStack) -> None:
    st = os.lstat(path)
    os.chown(path, uid, gid)
    cleanup.callback(_restore_owner, path, st.st_uid, st.st_gid)


def _restore_owner(path: str, uid: int, gid: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.chown(path, uid, gid)


def _rmdir_if_empty(path: str) -> None:
    """Remove a directory the jailer made; what the user or the VMM left in it stays, and it with them."""
    try:
        os.rmdir(path)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTEMPTY):
            raise


def _remove_sockets(directory: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            if stat.S_ISSOCK(entry.stat(follow_symlinks=False).st_mode):
                os.unlink(entry.path)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def write_pid_file(jail: Jail, pid: int, cleanup: contextlib.ExitStack) -> None:
    with open(jail.pid_file, "x") as f:
        f.write(f"{pid}\n")
    cleanup.callback(_remove, jail.pid_file)
