"""Preparing the rig's outer Linux: Debian's generic kernel and a busybox initramfs.

Everything is cached under ``cache_dir()/nested/``, keyed by what it is made
from (the kernel package and version, busybox's bytes, the module list), so
only the first run downloads and builds; later runs only write the few-KiB
per-run archive.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from firelet.devtools import host
from firelet.devtools.cache import cache_dir, content_key
from firelet.devtools.nested import initramfs as cpio
from firelet.devtools.nested.modules import OPTIONAL_MODULES, REQUIRED_MODULES, resolve_modules
from firelet.errors import FireletError, MissingToolError

# Bump when the layout of the base archive changes, to rebuild cached copies.
_BASE_FORMAT = "1"
# Debian's generic 6.1 kernel: it has 9p, virtio-pci and kvm-amd as modules.
_KERNEL_PACKAGE = re.compile(r"linux-image-(6\.1\.0-(\d+)-amd64)-unsigned\Z")
_BUSYBOX = Path("/bin/busybox")
# program -> the Debian package that provides it
_TOOLS = {"qemu-system-x86_64": "qemu-system-x86", "depmod": "kmod", "apt-get": "apt"}


class RigPrepareError(FireletError):
    """The outer kernel or initramfs could not be prepared."""


@dataclass(frozen=True)
class OuterKernel:
    """A prepared outer kernel: its image and the modules the initramfs carries."""

    release: str        # e.g. "6.1.0-56-amd64"
    vmlinuz: Path
    modules: list[Path]  # load order
    vmlinux: Path | None = None  # the uncompressed ELF, booted through PVH when present

    @property
    def boot_image(self) -> Path:
        return self.vmlinux or self.vmlinuz


@dataclass(frozen=True)
class RigBase:
    """What every run shares: the kernel and the base initramfs."""

    kernel: OuterKernel
    base_initrd: Path


def rig_dir() -> Path:
    path = cache_dir() / "nested"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run(argv: list[str], what: str, cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise MissingToolError(f"{argv[0]} is not installed; install it with apt-get") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RigPrepareError(f"{what} failed ({' '.join(argv[:3])}...): {last}")
    return proc.stdout


def _apt_install(package: str) -> None:
    """Install a Debian package as root, or say which one to install."""
    host.apt_install([package], why="the nested rig", progress=None)


def _is_static_elf(path: Path) -> bool:
    """True for an ELF executable without a program interpreter (PT_INTERP)."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if data[:4] != b"\x7fELF" or data[4] != 2:  # 64-bit ELF only
        return False
    phoff = int.from_bytes(data[32:40], "little")
    phentsize = int.from_bytes(data[54:56], "little")
    phnum = int.from_bytes(data[56:58], "little")
    for i in range(phnum):
        off = phoff + i * phentsize
        if int.from_bytes(data[off:off + 4], "little") == 3:  # PT_INTERP
            return False
    return True


def ensure_host_tools() -> None:
    """Install (as root) or name what the rig needs: QEMU, kmod, a static busybox."""
    for program, package in _TOOLS.items():
        if not shutil.which(program) and not Path("/usr/sbin", program).exists():
            _apt_install(package)
    if not _is_static_elf(_BUSYBOX):
        _apt_install("busybox-static")
        if not _is_static_elf(_BUSYBOX):
            raise MissingToolError("/bin/busybox is not statically linked: install busybox-static")


def _candidates(dep_text: str | None = None) -> list[tuple[int, str]]:
    """Generic 6.1 kernel packages apt can fetch, newest ABI first."""
    names = _run(["apt-cache", "pkgnames", "linux-image-6.1.0-"], "listing kernel packages").split()
    found = []
    for name in names:
        match = _KERNEL_PACKAGE.match(name)
        if match:
            found.append((int(match.group(2)), name))
    found.sort(reverse=True)
    usable = []
    for abi, name in found:
        policy = _run(["apt-cache", "policy", name], "asking apt about " + name)
        if re.search(r"Candidate: (?!\(none\))\S+", policy):
            usable.append((abi, name))
    return usable


def _choose_kernel_package() -> str:
    usable = _candidates()
    if not usable and os.geteuid() == 0:
        subprocess.run(["apt-get", "update"], capture_output=True)
        usable = _candidates()
    if not usable:
        raise MissingToolError(
            "no Debian package linux-image-6.1.0-<N>-amd64-unsigned is available: "
            "run apt-get update (Debian 12 bookworm sources)")
    return usable[0][1]


#: The module names a prepared kernel was resolved for, as its ``done`` file records them.
_WANTED_LINE = "#wanted " + " ".join(REQUIRED_MODULES + OPTIONAL_MODULES)


def _cached_kernel() -> OuterKernel | None:
    """The newest kernel a previous run prepared, if any (so runs need no apt look-up)."""
    dirs = sorted(rig_dir().glob("kernel-*/done"), key=lambda p: p.stat().st_mtime, reverse=True)
    for done in dirs:
        kernel = _load_kernel(done.parent)
        if kernel is not None:
            return kernel
    return None


def _load_kernel(directory: Path) -> OuterKernel | None:
    try:
        release, *lines = (directory / "done").read_text().split("\n")
    except OSError:
        return None
    if _WANTED_LINE not in lines:  # prepared for another module list (e.g. before vhost_net joined it)
        return None
    paths = [directory / "modules" / m for m in lines if m and not m.startswith("#")]
    vmlinuz = directory / "vmlinuz"
    if not vmlinuz.exists() or not all(p.exists() for p in paths):
        return None
    vmlinux = directory / "vmlinux"
    return OuterKernel(release, vmlinuz, paths, vmlinux if vmlinux.exists() else None)


# Documentation/arch/x86/boot.rst: the protected-mode payload of a bzImage is
# compressed; Debian compresses with xz (CONFIG_KERNEL_XZ), whose stream starts so.
_XZ_MAGIC = b"\xfd7zXZ\x00"
_ELF_MAGIC = b"\x7fELF"


def extract_vmlinux(vmlinuz: bytes) -> bytes | None:
    """The ELF kernel inside a bzImage whose payload is xz, or None if it is not that.

    Booting the ELF through its PVH entry skips the in-guest xz decompression,
    which under QEMU's software CPU costs seconds of every rig boot.
    """
    import lzma

    start = vmlinuz.find(_XZ_MAGIC)
    while start >= 0:
        try:
            elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(vmlinuz[start:])
        except lzma.LZMAError:
            elf = b""
        if elf.startswith(_ELF_MAGIC):
            return elf
        start = vmlinuz.find(_XZ_MAGIC, start + 1)
    return None


def _add_vmlinux(kernel: OuterKernel) -> OuterKernel:
    """Unpack vmlinux next to vmlinuz once; keep the bzImage boot if that fails."""
    if kernel.vmlinux is not None:
        return kernel
    elf = extract_vmlinux(kernel.vmlinuz.read_bytes())
    if elf is None:
        return kernel
    target = kernel.vmlinuz.with_name("vmlinux")
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(elf)
    tmp.replace(target)
    return _load_kernel(target.parent) or kernel


def _fetch_kernel(package: str) -> OuterKernel:
    """Download, unpack and ``depmod`` the package; keep only vmlinuz and the modules we load."""
    match = _KERNEL_PACKAGE.match(package)
    assert match is not None, f"{package} was chosen from the names this pattern matched"
    release = match.group(1)
    with tempfile.TemporaryDirectory(dir=rig_dir()) as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        _run(["apt-get", "download", package], "downloading " + package, cwd=work)
        debs = list(work.glob("*.deb"))
        if not debs:
            raise RigPrepareError(f"apt-get download {package} produced no .deb")
        version = debs[0].name.split("_")[1]
        target = rig_dir() / f"kernel-{package}_{version}"
        loaded = _load_kernel(target)
        if loaded is not None:
            return loaded
        tree = work / "x"
        _run(["dpkg-deb", "-x", str(debs[0]), str(tree)], "unpacking " + package)
        _run(["depmod", "-b", str(tree), release], "depmod")
        moddir = tree / "lib" / "modules" / release
        if not moddir.exists():
            moddir = tree / "usr" / "lib" / "modules" / release
        order = resolve_modules((moddir / "modules.dep").read_text(), REQUIRED_MODULES, OPTIONAL_MODULES)
        staging = work / "out"
        (staging / "modules").mkdir(parents=True)
        shutil.copy2(tree / "boot" / f"vmlinuz-{release}", staging / "vmlinuz")
        names = []
        for rel in order:
            name = rel.rsplit("/", 1)[-1]
            shutil.copy2(moddir / rel, staging / "modules" / name)
            names.append(name)
        (staging / "done").write_text("\n".join([release, *names, _WANTED_LINE]) + "\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    kernel = _load_kernel(target)
    if kernel is None:
        raise RigPrepareError(f"the prepared kernel in {target} is incomplete; delete it and retry")
    return kernel


def _base_initrd(kernel: OuterKernel) -> Path:
    busybox = _BUSYBOX.read_bytes()
    key = content_key(_BASE_FORMAT, kernel.release, hashlib.sha256(busybox).hexdigest(),
                      *[p.name for p in kernel.modules])
    path = rig_dir() / f"base-{key}.cpio.gz"
    if path.exists():
        return path
    entries = [cpio.directory(d) for d in ("bin", "dev", "proc", "sys", "tmp", "host", "rig", "lib", "lib/modules")]
    entries.append(cpio.regular("bin/busybox", busybox, 0o755))
    entries.append(cpio.symlink("bin/sh", "busybox"))
    entries += [cpio.regular(f"lib/modules/{p.name}", p.read_bytes()) for p in kernel.modules]
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(cpio.gzip_cpio(entries))
    tmp.replace(path)
    return path


def prepare_base() -> RigBase:
    """The outer kernel and base initramfs, built (and cached) on first use."""
    with host.locked(rig_dir() / ".lock"):
        ensure_host_tools()
        kernel = _add_vmlinux(_cached_kernel() or _fetch_kernel(_choose_kernel_package()))
        return RigBase(kernel, _base_initrd(kernel))


def module_paths_inside(kernel: OuterKernel) -> list[str]:
    """Where the base initramfs puts the modules, in load order."""
    return [f"/lib/modules/{p.name}" for p in kernel.modules]


def write_run_initrd(base: RigBase, init_text: str, cmd_text: str, directory: Path) -> Path:
    """The base archive with this run's ``/init`` and command script appended."""
    run_archive = cpio.gzip_cpio([
        cpio.directory("rig"),
        cpio.regular("init", init_text.encode(), 0o755),
        cpio.regular("rig/cmd.sh", cmd_text.encode(), 0o644),
    ])
    path = directory / "initrd.gz"
    with open(path, "wb") as out, open(base.base_initrd, "rb") as src:
        shutil.copyfileobj(src, out)
        out.write(run_archive)
    return path
