"""Guest root filesystems: an ext4 disk image and a gzip'd cpio initramfs.

Both hold the same small tree: Debian's static busybox with a symlink per
applet, ``guest/rootfs/init`` as ``/init`` and ``/sbin/init``, and a few
files in ``/etc``. They are cached under ``cache_dir()/rootfs/`` keyed by
what they are built from. The cached ext4 image is a *template*: a caller
that lets a guest write to its disk boots a copy from :func:`copy_rootfs`.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from firelet.devtools import host as _host
from firelet.devtools.cache import cache_dir, content_key, repo_root
from firelet.devtools.host import Progress, say
from firelet.devtools.images.cpio import write_newc
from firelet.devtools.images.tree import CHARDEV, DIR, FILE, SYMLINK, Entry, stage
from firelet.errors import FireletError, UsageError

# Bump when the tree's recipe changes (files, modes, mkfs flags).
RECIPE_VERSION = "1"

INIT_PATH = Path("guest/rootfs/init")
BUSYBOX_CANDIDATES = (Path("/bin/busybox"), Path("/usr/bin/busybox"))
BUSYBOX_PACKAGE = "busybox-static"
MKFS_PACKAGE = "e2fsprogs"
LABEL = "firelet-root"
MIN_SIZE_MIB, MAX_SIZE_MIB = 8, 64 * 1024

# Our own files win over busybox applets of the same name (busybox's
# `init` and `linuxrc` would otherwise replace the firelet init).
_RESERVED = {"init", "sbin/init", "linuxrc", "bin/busybox"}

_DIRS = ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev",
         "run", "mnt", "root")

# Linux's devices.txt: the nodes the kernel needs before devtmpfs is mounted.
_DEV_NODES = (("dev/console", 0o600, (5, 1)), ("dev/null", 0o666, (1, 3)))

_ETC = {
    "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\n",
    "etc/group": b"root:x:0:\n",
    "etc/hostname": b"firelet\n",
    "etc/profile": b"export PS1='\\u@\\h:\\w\\$ '\nalias ll='ls -l'\n",
}


def find_busybox(progress: Progress | None = None) -> Path:
    """The host's static busybox, installed with apt when root and missing."""
    for candidate in BUSYBOX_CANDIDATES:
        if candidate.is_file():
            return candidate
    _host.apt_install([BUSYBOX_PACKAGE], why="building the guest root filesystem", progress=progress)
    for candidate in BUSYBOX_CANDIDATES:
        if candidate.is_file():
            return candidate
    raise FireletError(f"{BUSYBOX_PACKAGE} is installed but no busybox binary was found in /bin")


def root_tree(busybox: Path, init: bytes) -> list[Entry]:
    """The guest's root tree, parents before children."""
    entries = [Entry(path, DIR, 0o755) for path in _DIRS]
    entries.append(Entry("tmp", DIR, 0o1777))
    entries.append(Entry("bin/busybox", FILE, 0o755, busybox.read_bytes()))
    have = set(_DIRS) | {"tmp"}
    for applet in _applets(busybox):
        if applet in _RESERVED:
            continue
        # The kernel's cpio unpacker does not create missing parents.
        parent = applet.rpartition("/")[0]
        if parent and parent not in have:
            entries.append(Entry(parent, DIR, 0o755))
            have.add(parent)
        entries.append(Entry(applet, SYMLINK, 0o777, b"/bin/busybox"))
    entries.append(Entry("init", FILE, 0o755, init))
    entries.append(Entry("sbin/init", FILE, 0o755, init))
    entries.extend(Entry(path, FILE, 0o644, data) for path, data in _ETC.items())
    entries.extend(Entry(path, CHARDEV, perm, rdev=rdev) for path, perm, rdev in _DEV_NODES)
    return entries


def rootfs_key(busybox: bytes, init: bytes, kind: str, size_mib: int = 0) -> str:
    """The cache key of a root filesystem image built from these inputs."""
    return content_key(hashlib.sha256(busybox).digest(), init, RECIPE_VERSION, kind, str(size_mib))


def build_rootfs(*, size_mib: int = 64, progress: Progress | None = None) -> Path:
    """The cached ext4 root image (a template: boot a :func:`copy_rootfs` copy to write)."""
    if not MIN_SIZE_MIB <= size_mib <= MAX_SIZE_MIB:
        raise UsageError(f"rootfs size must be {MIN_SIZE_MIB}..{MAX_SIZE_MIB} MiB, not {size_mib}")
    busybox, init = find_busybox(progress), _init_script()
    final = _rootfs_dir() / f"{rootfs_key(busybox.read_bytes(), init, 'ext4', size_mib)}.ext4"
    if final.is_file():  # no lock: the cache may be read-only (the rig)
        return final
    with _host.locked(final.with_suffix(".lock")):
        if final.is_file():
            return final
        mkfs = _mkfs(progress)
        say(progress, f"rootfs: building a {size_mib} MiB ext4 image")
        with tempfile.TemporaryDirectory(dir=final.parent, prefix=".rootfs-") as work:
            staging, image = Path(work) / "root", Path(work) / "image.ext4"
            staging.mkdir()
            stage(root_tree(busybox, init), staging)
            with open(image, "wb") as handle:
                handle.truncate(size_mib << 20)
            result = subprocess.run(
                [mkfs, "-q", "-F", "-L", LABEL, "-E", "root_owner=0:0", "-d", str(staging), str(image)],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
            if result.returncode != 0:
                detail = result.stdout.strip().splitlines()[-1:] or ["no output"]
                raise FireletError(
                    f"mkfs.ext4 failed making the guest root ({detail[0]}); "
                    "try a bigger --size-mib or check e2fsprogs is 1.43 or newer"
                )
            _host.publish(image, final)
    return final


def build_initramfs(*, progress: Progress | None = None) -> Path:
    """The cached gzip'd newc cpio of the same tree, for the kernel's initramfs."""
    busybox, init = find_busybox(progress), _init_script()
    final = _rootfs_dir() / f"{rootfs_key(busybox.read_bytes(), init, 'cpio')}.cpio.gz"
    if final.is_file():
        return final
    say(progress, "rootfs: building the initramfs (newc cpio, gzip)")
    archive = write_newc(root_tree(busybox, init))
    tmp = final.with_name(f".{final.name}.{os.getpid()}")
    try:
        # mtime=0 keeps the same inputs giving the same bytes.
        with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as packed:
            packed.write(archive)
        _host.publish(tmp, final)
    finally:
        _host.remove(tmp)
    return final


def copy_rootfs(dest: Path, *, source: Path | None = None) -> Path:
    """A private, sparse, writable copy of the root image (default: :func:`build_rootfs`)."""
    source = source if source is not None else build_rootfs()
    dest = Path(dest)
    if dest.is_dir():
        raise UsageError(f"{dest} is a directory: give the path of the image file to create")
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    result = subprocess.run(
        ["cp", "--sparse=always", "--reflink=auto", str(source), str(tmp)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    if result.returncode != 0:
        _host.remove(tmp)
        raise FireletError(f"could not copy the root image to {dest}: {result.stdout.strip()}")
    os.chmod(tmp, 0o644)
    os.replace(tmp, dest)
    return dest


def _applets(busybox: Path) -> list[str]:
    """Applet paths such as ``bin/sh`` from the binary itself (``--list-full``)."""
    result = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True)
    if result.returncode != 0:
        raise FireletError(f"{busybox} --list-full failed: reinstall {BUSYBOX_PACKAGE}")
    return sorted({line.strip().lstrip("/") for line in result.stdout.splitlines() if line.strip()})


def _init_script() -> bytes:
    return (repo_root() / INIT_PATH).read_bytes()


def _mkfs(progress: Progress | None) -> str:
    for name in ("mkfs.ext4", "/sbin/mkfs.ext4", "/usr/sbin/mkfs.ext4"):
        if found := shutil.which(name):
            return found
    _host.apt_install([MKFS_PACKAGE], why="building the guest root filesystem", progress=progress)
    found = shutil.which("mkfs.ext4") or shutil.which("/usr/sbin/mkfs.ext4")
    if found is None:
        raise FireletError(f"mkfs.ext4 not found after installing {MKFS_PACKAGE}: add /usr/sbin to PATH")
    return found


def _rootfs_dir() -> Path:
    path = cache_dir() / "rootfs"
    path.mkdir(parents=True, exist_ok=True)
    return path
