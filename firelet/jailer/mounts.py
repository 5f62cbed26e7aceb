"""The jail's mount namespace: private mounts, the read-only runtime, /dev, and pivot_root.

Runs in the forked VMM process, after ``unshare(CLONE_NEWNS)``, so every mount here
lives and dies with the VMM's namespace: none reaches the host's mount table. The
runtime's directories are built on small tmpfs mounts at the jail's top-level
names, so its mount points leave nothing on the host's disk either.
"""

from __future__ import annotations

import os

from firelet.jailer import syscalls as sc
from firelet.jailer.runtime import Exposure

#: Documentation/admin-guide/devices.txt, char major 10 (misc): what Firecracker's jailer creates.
DEVICES = {"kvm": (10, 232), "net/tun": (10, 200)}
#: Made in the jail too when the host has them: vhost-net, for interfaces that ask for it (firelet's own).
HOST_OPTIONAL_DEVICES = {"vhost-net": (10, 238)}
_TMPFS_FLAGS = sc.MS_NOSUID | sc.MS_NODEV
_RO_BIND = sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV


def make_private() -> None:
    """Stop mount events propagating to and from the host (pivot_root(2) needs it of the old root)."""
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)


def bind_root(root: str) -> None:
    """pivot_root(2) needs the new root to be a mount point: bind it on itself."""
    sc.mount(root, root, None, sc.MS_BIND)


def make_dev(root: str, uid: int, gid: int) -> None:
    """A tmpfs /dev holding only the VMM's device nodes, owned by the VMM's user, then made read-only."""
    dev = os.path.join(root, "dev")
    sc.mount("firelet-dev", dev, "tmpfs", sc.MS_NOSUID | sc.MS_NOEXEC, "mode=0755,size=64k")
    optional = {name: numbers for name, numbers in HOST_OPTIONAL_DEVICES.items()
                if os.path.exists(os.path.join("/dev", name))}
    for name, (major, minor) in (DEVICES | optional).items():
        path = os.path.join(dev, name)
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        os.mknod(path, 0o600 | 0o020000, os.makedev(major, minor))  # S_IFCHR, rw for the owner only
        os.chown(path, uid, gid)
    sc.mount(None, dev, None, sc.MS_REMOUNT | sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NOEXEC)


def expose_runtime(root: str, exposure: Exposure) -> None:
    """Recreate the runtime's paths in the jail, bind each read-only, then make their tmpfs read-only."""
    tops = [name for name, link in exposure.top_level().items() if link is None]
    for name in tops:
        sc.mount("firelet-runtime", os.path.join(root, name), "tmpfs", _TMPFS_FLAGS, "mode=0755,size=1m")
    for path, target in sorted(exposure.symlinks.items()):
        if path.count("/") > 1:  # top-level symlinks were made on the host side
            os.makedirs(root + os.path.dirname(path), mode=0o755, exist_ok=True)
            os.symlink(target, root + path)
    for path, is_dir in sorted(exposure.binds.items()):
        inside = root + path
        os.makedirs(os.path.dirname(inside), mode=0o755, exist_ok=True)
        if is_dir:
            os.makedirs(inside, mode=0o755, exist_ok=True)
        else:
            os.close(os.open(inside, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
        sc.mount(path, inside, None, sc.MS_BIND)  # not MS_REC: mounts below the path stay hidden
        sc.mount(None, inside, None, _RO_BIND)  # a bind takes the new flags only on a remount (mount(2))
    for name in tops:
        sc.mount(None, os.path.join(root, name), None, sc.MS_REMOUNT | sc.MS_RDONLY | _TMPFS_FLAGS)


def pivot(root: str) -> None:
    """Make ``root`` the root and detach the host's (pivot_root(2), "pivot_root(".", ".")").

    Stacking the old root on the new one and detaching it needs no ``old_root``
    directory, so nothing is made on the jail's disk for it.
    """
    os.chdir(root)
    sc.pivot_root(".", ".")
    sc.umount2(".", sc.MNT_DETACH)
    os.chdir("/")
