"""Build the guest kernel from Debian's ``linux-source-6.1``.

The kernel is ``make allnoconfig`` plus ``guest/kernel/microvm-6.1.config``,
built out of tree in the cache and kept under a key made of the fragment, the
source package's version and :data:`RECIPE_VERSION`; a second call with the
same inputs returns at once. Artifacts appear by an atomic rename, so an
interrupted build never leaves half a kernel behind.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from firelet.devtools import host as _host
from firelet.devtools.cache import cache_dir, content_key, repo_root
from firelet.devtools.host import Progress, say
from firelet.devtools.images.kconfig import dropped_options
from firelet.devtools.images.progress import LiveLine, elapsed, ticker
from firelet.errors import FireletError

# Bump when the way the kernel is built changes (flags, targets, steps), so
# old cached kernels are not mistaken for new ones.
RECIPE_VERSION = "1"

SOURCE_PACKAGE = "linux-source-6.1"
SOURCE_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
FRAGMENT_PATH = Path("guest/kernel/microvm-6.1.config")

# A 6.1 allnoconfig-sized build tree is ~1 GiB next to ~1.3 GiB of source.
MIN_FREE_BYTES = 3 << 30

# Build tools -> the Debian packages that provide them.
BUILD_DEPENDENCIES = {
    "gcc": "gcc",
    "make": "make",
    "ld": "binutils",
    "bc": "bc",
    "flex": "flex",
    "bison": "bison",
    "perl": "perl",
    "xz": "xz-utils",
    "tar": "tar",
    "/usr/include/libelf.h": "libelf-dev",
    "/usr/include/openssl/opensslv.h": "libssl-dev",
}

# Linux x86 boot protocol (Documentation/arch/x86/boot.rst): the setup header
# carries the magic "HdrS" at offset 0x202 of a bzImage.
BZIMAGE_MAGIC_OFFSET = 0x202
BZIMAGE_MAGIC = b"HdrS"
# xen/include/public/elfnote.h: the 32-bit entry point a PVH loader jumps to.
XEN_ELFNOTE_PHYS32_ENTRY = 18
_PT_NOTE = 4


@dataclass(frozen=True)
class KernelArtifacts:
    """A built guest kernel: the ELF (PVH entry) and the bzImage of the same build."""

    vmlinux: Path
    bzimage: Path
    version: str


def ensure_build_deps(progress: Progress | None = None) -> None:
    """Make sure the kernel's build tools are installed.

    As root (CI, the nested rig) missing packages are installed with apt;
    otherwise the error names the exact apt-get command to run.
    """
    missing = _host.missing_packages(BUILD_DEPENDENCIES)
    _host.apt_install(missing, why="building the guest kernel", progress=progress)


def kernel_key(fragment: bytes, source_version: str) -> str:
    """The cache key of a kernel built from ``fragment`` and that source version."""
    return content_key(fragment, source_version, RECIPE_VERSION)


def build_kernel(*, jobs: int | None = None, progress: Progress | None = None) -> KernelArtifacts:
    """Build (or find in the cache) the guest kernel; see the module docstring.

    A build takes minutes, so with ``progress=None`` it reports to stderr
    through a :class:`~firelet.devtools.images.progress.LiveLine`; pass
    ``lambda message: None`` for silence. A cache hit reports nothing.
    """
    fragment_path = repo_root() / FRAGMENT_PATH
    fragment = fragment_path.read_bytes()
    source_version = _ensure_source(progress)
    key = kernel_key(fragment, source_version)
    root = cache_dir() / "kernel"
    final = root / key
    if (cached := _cached(final)) is not None:  # no lock: the cache may be read-only (the rig)
        return cached
    with _host.locked(root / f"{key}.lock"):
        if (cached := _cached(final)) is not None:
            return cached
        if progress is None:
            progress = LiveLine()
        ensure_build_deps(progress)
        _host.require_free_space(cache_dir(), MIN_FREE_BYTES, what="building the guest kernel")
        source = _extract_source(root, source_version, progress)
        _remove_stale_builds(root, key)
        tmp = root / f".build-{key}-{_host.process_tag()}"
        try:
            artifacts = _build(source, fragment_path, tmp, root / f"build-{key}.log",
                               jobs or (os.cpu_count() or 1) + 1, progress)
            _host.publish(artifacts, final)
        finally:
            _host.remove(tmp)
    cached = _cached(final)
    assert cached is not None, "published kernel vanished"
    return cached


def check_vmlinux(path: Path) -> int:
    """The PVH entry address of an ELF64 vmlinux; a FireletError if it has none."""
    data = path.read_bytes()
    if data[:5] != b"\x7fELF\x02":
        raise FireletError(f"{path} is not a 64-bit ELF kernel: rebuild it with `firelet build kernel`")
    entry = _pvh_entry(data)
    if entry is None:
        raise FireletError(f"{path} has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY): build it with CONFIG_PVH=y")
    return entry


def check_bzimage(path: Path) -> None:
    """Fail unless ``path`` carries the boot protocol's setup-header magic."""
    with open(path, "rb") as handle:
        handle.seek(BZIMAGE_MAGIC_OFFSET)
        if handle.read(len(BZIMAGE_MAGIC)) != BZIMAGE_MAGIC:
            raise FireletError(f"{path} is not a bzImage (no HdrS magic at 0x202)")


def _pvh_entry(elf: bytes) -> int | None:
    """Walk the PT_NOTE segments of an ELF64 image for Xen's PHYS32_ENTRY note."""
    try:
        phoff, = struct.unpack_from("<Q", elf, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
        for index in range(phnum):
            p_type, _flags, p_offset = struct.unpack_from("<IIQ", elf, phoff + index * phentsize)
            if p_type != _PT_NOTE:
                continue
            p_filesz, = struct.unpack_from("<Q", elf, phoff + index * phentsize + 0x20)
            pos, end = p_offset, min(p_offset + p_filesz, len(elf))  # a size past the file is garbage
            while pos + 12 <= end:
                namesz, descsz, note_type = struct.unpack_from("<III", elf, pos)
                name_at = pos + 12
                desc_at = name_at + (namesz + 3) // 4 * 4
                name = elf[name_at:name_at + namesz].rstrip(b"\0")
                if name == b"Xen" and note_type == XEN_ELFNOTE_PHYS32_ENTRY and descsz in (4, 8):
                    return int.from_bytes(elf[desc_at:desc_at + descsz], "little")
                pos = desc_at + (descsz + 3) // 4 * 4
    except (struct.error, OverflowError):  # offsets past the file, or past what an index can hold
        return None
    return None


def _remove_stale_builds(root: Path, key: str) -> None:
    """Reclaim build dirs of this key left by interrupted builds on this host.

    Only dirs whose process is gone: the lock does not hold across kernels
    (the nested rig shares the cache over 9p), so a dir from another host,
    or from a live process, may be a build in progress.
    """
    for candidate in root.glob(f".build-{key}-*"):
        if _host.tag_is_dead(candidate.name.removeprefix(f".build-{key}-")):
            _host.remove(candidate)


def _cached(final: Path) -> KernelArtifacts | None:
    vmlinux, bzimage, version = final / "vmlinux", final / "bzImage", final / "version"
    if vmlinux.is_file() and bzimage.is_file() and version.is_file():
        return KernelArtifacts(vmlinux=vmlinux, bzimage=bzimage, version=version.read_text().strip())
    return None


def _ensure_source(progress: Progress | None) -> str:
    """The installed source package's version, installing it if needed."""
    if not SOURCE_TARBALL.is_file():
        _host.apt_install([SOURCE_PACKAGE], why="building the guest kernel", progress=progress)
        if not SOURCE_TARBALL.is_file():
            raise FireletError(f"{SOURCE_PACKAGE} is installed but {SOURCE_TARBALL} is missing: reinstall the package")
    version = _host.package_version(SOURCE_PACKAGE)
    if version is None:  # not a dpkg system: fall back to the tarball's identity
        stat = SOURCE_TARBALL.stat()
        version = f"tarball-{stat.st_size}-{int(stat.st_mtime)}"
    return version


def _extract_source(root: Path, version: str, progress: Progress | None) -> Path:
    """Unpack the kernel source once per source version, atomically."""
    source = root / f"src-{version}"
    if (source / "Makefile").is_file():
        return source
    say(progress, f"kernel: extracting {SOURCE_TARBALL} (once per source version)")
    tmp = root / f".src-{version}-{os.getpid()}"
    _host.remove(tmp)
    tmp.mkdir(parents=True)
    try:
        result = subprocess.run(["tar", "-xf", str(SOURCE_TARBALL), "-C", str(tmp)],
                                stderr=subprocess.PIPE, text=True)
        if result.returncode != 0:
            raise FireletError(f"could not unpack {SOURCE_TARBALL}: {result.stderr.strip()[-200:]}")
        top = [entry for entry in tmp.iterdir() if (entry / "Makefile").is_file()]
        if len(top) != 1:
            raise FireletError(f"{SOURCE_TARBALL} does not hold one kernel tree: reinstall {SOURCE_PACKAGE}")
        _host.publish(top[0], source)
    finally:
        _host.remove(tmp)
    return source


def _build(source: Path, fragment: Path, tmp: Path, log: Path, jobs: int,
           progress: Progress | None) -> Path:
    """Configure and compile in ``tmp``; return a directory holding the artifacts."""
    build = tmp / "build"
    build.mkdir(parents=True)
    make = ["make", "-C", str(source), f"O={build}"]
    env = dict(os.environ, KBUILD_BUILD_USER="firelet", KBUILD_BUILD_HOST="firelet")
    log.unlink(missing_ok=True)
    say(progress, "kernel: configuring (allnoconfig + microvm-6.1.config, olddefconfig)")
    _run_make([*make, f"KCONFIG_ALLCONFIG={fragment}", "allnoconfig"], env, log, progress)
    _run_make([*make, "olddefconfig"], env, log, progress)
    dropped = dropped_options(fragment.read_text(), (build / ".config").read_text())
    if dropped:
        raise FireletError(
            f"Kconfig did not keep these options of {fragment.name}: {', '.join(dropped)}; "
            "add the options they depend on (see `make menuconfig`, or the Kconfig files) to the fragment"
        )
    say(progress, f"kernel: compiling vmlinux and bzImage with make -j{jobs} (log: {log})")
    started = time.monotonic()
    _run_make([*make, f"-j{jobs}", "vmlinux", "bzImage"], env, log, progress, count_objects=True)
    out = tmp / "out"
    out.mkdir()
    os.replace(build / "vmlinux", out / "vmlinux")
    os.replace(build / "arch/x86/boot/bzImage", out / "bzImage")
    version = (build / "include/config/kernel.release").read_text().strip()
    (out / "version").write_text(version + "\n")
    check_vmlinux(out / "vmlinux")
    check_bzimage(out / "bzImage")
    say(progress, f"kernel: built {version} in {elapsed(started)}")
    return out


def _run_make(argv: list[str], env: dict[str, str], log: Path, progress: Progress | None,
              *, count_objects: bool = False) -> None:
    """Run make with output appended to ``log``, ticking progress while it runs."""
    every, tick = ticker(progress)
    started = last_tick = time.monotonic()
    objects, offset = 0, 0
    with open(log, "ab") as sink:
        sink.write(f"$ {' '.join(argv)}\n".encode())
        sink.flush()
        proc = subprocess.Popen(argv, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        try:
            while proc.poll() is None:
                time.sleep(0.25)
                if tick is not None and count_objects and time.monotonic() - last_tick >= every:
                    objects, offset = _count_compiled(log, objects, offset)
                    tick(f"kernel: compiling... {objects} objects, {elapsed(started)}")
                    last_tick = time.monotonic()
        except BaseException:
            proc.terminate()
            proc.wait()
            raise
    if proc.returncode != 0:
        print(_host.tail(log, 30), file=sys.stderr)
        raise FireletError(
            f"kernel build step `make {argv[-1]}` failed (exit {proc.returncode}); "
            f"the log's last lines are above, the whole log is {log}"
        )


def _count_compiled(log: Path, count: int, offset: int) -> tuple[int, int]:
    """Add the kbuild ``  CC``/``  AS`` lines written to ``log`` since ``offset``."""
    with open(log, "rb") as handle:
        handle.seek(offset)
        chunk = handle.read()
    complete = chunk.rfind(b"\n") + 1
    for line in chunk[:complete].splitlines():
        if line.startswith((b"  CC ", b"  AS ")):
            count += 1
    return count, offset + complete
