"""Host-side plumbing shared by the image builders and the nested rig: tools, apt, disk, locks.

They run real programs (make, mkfs.ext4, qemu) and may install Debian
packages. Everything that can fail because of the host turns into a
:class:`~firelet.errors.FireletError` naming the package or the fix.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

from firelet.errors import FireletError, MissingToolError

Progress = Callable[[str], None]

_GIB = 1 << 30


def say(progress: Progress | None, message: str) -> None:
    """Report a milestone, if anyone is listening."""
    if progress is not None:
        progress(message)


def is_root() -> bool:
    return os.geteuid() == 0


def missing_packages(requirements: dict[str, str]) -> list[str]:
    """Debian packages to install for the absent ``requirements``.

    Keys are program names (looked up on PATH) or absolute paths (headers);
    values are the Debian packages that provide them.
    """
    missing: list[str] = []
    for need, package in requirements.items():
        present = Path(need).exists() if need.startswith("/") else shutil.which(need) is not None
        if not present and package not in missing:
            missing.append(package)
    return missing


def apt_install(packages: list[str], *, why: str, progress: Progress | None) -> None:
    """Install Debian ``packages`` when root, else say exactly what to run.

    Installing as root is what a fresh CI machine or the nested rig needs;
    for a person without root the command to run is more useful than sudo
    prompts from inside a build.
    """
    if not packages:
        return
    command = "apt-get install -y " + " ".join(packages)
    if not is_root() or shutil.which("apt-get") is None:
        raise MissingToolError(f"{why} needs Debian packages {', '.join(packages)}: run `{command}` as root")
    say(progress, f"installing {' '.join(packages)} with apt-get ({why})")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    argv = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    result = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:  # a fresh machine may have no package lists yet
        subprocess.run(["apt-get", "update"], env=env, capture_output=True)
        result = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        last = (result.stdout.strip().splitlines() or ["(no output)"])[-1]
        raise MissingToolError(
            f"`{command}` failed ({last.strip()}); run `apt-get update` and retry, or install them by hand"
        )


def package_version(package: str) -> str | None:
    """The installed version of a Debian package, or None."""
    if shutil.which("dpkg-query") is None:
        return None
    result = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", package],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    version = result.stdout.strip()
    return version if result.returncode == 0 and version else None


def require_free_space(where: Path, need_bytes: int, *, what: str) -> None:
    """Fail early, with the numbers, rather than half way through a build."""
    free = shutil.disk_usage(where).free
    if free < need_bytes:
        raise FireletError(
            f"{what} needs about {need_bytes / _GIB:.1f} GiB free in {where} but only "
            f"{free / _GIB:.1f} GiB is free: free some space or set FIRELET_CACHE to a bigger disk"
        )


@contextlib.contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock so two processes never build the same artifact at once."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def publish(tmp: Path, final: Path) -> Path:
    """Atomically move a finished ``tmp`` (file or directory) to ``final``.

    A rename within one filesystem is all-or-nothing, so readers see either no
    artifact or a whole one, even if the build was interrupted.
    """
    try:
        os.rename(tmp, final)
    except OSError:
        if not final.exists():
            raise
        remove(tmp)  # someone else published the same content first
    return final


def remove(path: Path) -> None:
    """Delete a file or directory tree, ignoring what is already gone."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a (possibly large) log file."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def process_tag() -> str:
    """``<boot>-<pid>``: names a temporary dir after the process that owns it.

    ``<boot>`` comes from the running kernel's boot id, so a tag written by a
    process in another kernel (the nested rig shares the cache over 9p) is
    never mistaken for one of ours.
    """
    return f"{_boot_id()}-{os.getpid()}"


def tag_is_dead(tag: str) -> bool:
    """True when a :func:`process_tag` names a process of this kernel that has exited."""
    boot, _, pid = tag.rpartition("-")
    if boot != _boot_id() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")[:12]
    except OSError:
        return socket.gethostname().replace("-", "_")
