"""Building the real root filesystems (ext4 via mkfs.ext4 -d, cpio initramfs)."""

from __future__ import annotations

import gzip
import os
import subprocess
from pathlib import Path

import pytest

from firelet.devtools.cache import repo_root
from firelet.devtools.images import build_initramfs, build_rootfs, copy_rootfs
from firelet.devtools.images.cpio import read_newc
from firelet.devtools.images.rootfs import INIT_PATH, find_busybox, root_tree, rootfs_key
from firelet.devtools.images.tree import CHARDEV, DIR, FILE, SYMLINK
from firelet.errors import UsageError


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("FIRELET_CACHE", str(root))
    return root


def _debugfs(image: Path, request: str) -> str:
    return subprocess.run(["debugfs", "-R", request, str(image)], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, check=True).stdout.decode(errors="replace")


def test_ext4_image_holds_init_busybox_and_etc(cache: Path) -> None:
    image = build_rootfs(size_mib=16)
    assert image.parent == cache / "rootfs" and image.suffix == ".ext4"
    assert image.stat().st_size == 16 << 20
    listing = _debugfs(image, "ls -l /")
    modes = {line.split()[-1]: line.split()[1] for line in listing.splitlines() if line.strip()}
    assert modes["init"] == "100755"
    assert modes["tmp"] == "41777"
    for name in ("bin", "sbin", "etc", "proc", "sys", "dev", "run", "mnt", "root"):
        assert modes[name] == "40755", name
    assert _debugfs(image, "cat /init").encode() == (repo_root() / INIT_PATH).read_bytes()
    assert _debugfs(image, "cat /sbin/init").startswith("#!/bin/sh")
    assert "100755" in _debugfs(image, "stat /bin/busybox").replace("Mode:  0755", "100755")
    assert "/bin/busybox" in _debugfs(image, "stat /bin/sh")  # fast symlink target
    assert _debugfs(image, "cat /etc/hostname") == "firelet\n"
    label = subprocess.run(["dumpe2fs", "-h", str(image)], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, check=True).stdout.decode()
    assert "firelet-root" in label


def test_ext4_image_has_console_and_null_nodes_when_built_as_root(cache: Path) -> None:
    listing = _debugfs(build_rootfs(size_mib=16), "ls -l /dev")
    modes = {line.split()[-1]: line.split()[1] for line in listing.splitlines() if line.strip()}
    if os.geteuid() == 0:
        assert modes["console"] == "20600" and modes["null"] == "20666"
    else:  # mknod needs root: devtmpfs provides them in the guest instead
        assert "console" not in modes and "null" not in modes


def test_second_build_is_a_cache_hit(cache: Path) -> None:
    first = build_rootfs(size_mib=16)
    mtime = first.stat().st_mtime_ns
    assert build_rootfs(size_mib=16) == first
    assert first.stat().st_mtime_ns == mtime
    assert build_rootfs(size_mib=24) != first  # the size is part of the key


def test_size_out_of_range_is_a_usage_error(cache: Path) -> None:
    with pytest.raises(UsageError, match="size"):
        build_rootfs(size_mib=2)


def test_initramfs_is_the_same_tree_as_gzipped_newc(cache: Path) -> None:
    path = build_initramfs()
    assert path.name.endswith(".cpio.gz")
    entries = {entry.path: entry for entry in read_newc(gzip.decompress(path.read_bytes()))}
    init = entries["init"]
    assert init.kind == FILE and init.perm == 0o755
    assert init.data == (repo_root() / INIT_PATH).read_bytes()
    assert entries["bin/busybox"].data == find_busybox().read_bytes()
    assert entries["bin/sh"].kind == SYMLINK and entries["bin/sh"].data == b"/bin/busybox"
    assert entries["dev/console"].kind == CHARDEV and entries["dev/console"].rdev == (5, 1)
    assert entries["tmp"].kind == DIR and entries["tmp"].perm == 0o1777
    assert build_initramfs() == path


def test_tree_lists_parents_before_children_and_keeps_our_init() -> None:
    init = b"#!/bin/sh\n: firelet\n"
    tree = root_tree(find_busybox(), init)
    seen: set[str] = set()
    for entry in tree:
        parent = entry.path.rpartition("/")[0]
        assert not parent or parent in seen, f"{entry.path} before its parent"
        seen.add(entry.path)
    by_path = {entry.path: entry for entry in tree}
    assert len(by_path) == len(tree), "duplicate paths"
    assert by_path["sbin/init"].data == init  # busybox's own init applet does not replace it
    assert by_path["bin/base64"].kind == SYMLINK  # init needs base64, setsid, cttyhack
    assert by_path["bin/cttyhack"].kind == SYMLINK


def test_cache_key_follows_init_busybox_kind_and_size() -> None:
    base = rootfs_key(b"busybox", b"init", "ext4", 64)
    assert rootfs_key(b"busybox", b"init", "ext4", 64) == base
    assert rootfs_key(b"busybox", b"init v2", "ext4", 64) != base
    assert rootfs_key(b"busybox 1.36", b"init", "ext4", 64) != base
    assert rootfs_key(b"busybox", b"init", "ext4", 128) != base
    assert rootfs_key(b"busybox", b"init", "cpio") != base


def test_copy_is_sparse_private_and_writable(cache: Path, tmp_path: Path) -> None:
    template = build_rootfs(size_mib=32)
    copy = copy_rootfs(tmp_path / "disk.ext4", source=template)
    assert copy.read_bytes() == template.read_bytes()
    assert copy.stat().st_blocks * 512 < copy.stat().st_size // 2  # holes kept
    with open(copy, "r+b") as handle:
        handle.write(b"scribble")
    assert template.read_bytes()[:8] != b"scribble"
    default = copy_rootfs(tmp_path / "default.ext4")  # builds the default template first
    assert default.stat().st_size == 64 << 20
    assert build_rootfs().read_bytes() == default.read_bytes()
