"""The VM's cgroups: found from /proc/mounts, made, filled, read back, joined and removed.

As Firecracker's jailer (docs/jailer.md, ``--cgroup``, ``--parent-cgroup``): each
``<controller>.<knob>=<value>`` is written in ``<hierarchy>/<parent>/<id>``, where the
hierarchy is the cgroup2 mount (``--cgroup-version 2``) or the v1 mount that carries
the controller. Every value is read back and compared, so a limit the kernel
rounded away or refused is an error, not a surprise. Every directory made here is
registered on a cleanup stack and removed when the VM is gone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import time
from dataclasses import dataclass, field

from firelet.errors import FireletError

PROC_MOUNTS = "/proc/mounts"
_SIZE_SUFFIX = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_PAGE = os.sysconf("SC_PAGE_SIZE")
_RMDIR_TRIES = 50  # a reaped task leaves its cgroup within milliseconds; 50 x 10 ms is ample


class CgroupError(FireletError):
    """A cgroup could not be made, filled, joined or removed."""


@dataclass
class CgroupDir:
    """One directory ``<hierarchy>/<parent>/<id>`` and the files to set in it, in order."""

    hierarchy: str
    path: str
    settings: list[tuple[str, str]] = field(default_factory=list)
    v1_cpuset: bool = False


def mounts(proc_mounts: str = PROC_MOUNTS) -> list[tuple[str, str, list[str]]]:
    """(mount point, fs type, options) for every cgroup/cgroup2 mount; octal escapes undone."""
    found = []
    with open(proc_mounts) as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 4 and fields[2] in ("cgroup", "cgroup2"):
                point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])
                found.append((point, fields[2], fields[3].split(",")))
    return found


def plan(version: int, parent: str, vm_id: str, settings: tuple[tuple[str, str], ...],
         proc_mounts: str = PROC_MOUNTS) -> list[CgroupDir]:
    """The directories to make and what goes in each; raises CgroupError if a hierarchy is missing."""
    found = mounts(proc_mounts)
    if version == 2:
        roots = [point for point, kind, _ in found if kind == "cgroup2"]
        if not roots:
            raise CgroupError("cgroup: no cgroup2 hierarchy is mounted (mount -t cgroup2 none /sys/fs/cgroup, "
                              "or use --cgroup-version 1)")
        root = "/sys/fs/cgroup" if "/sys/fs/cgroup" in roots else roots[0]
        return [CgroupDir(root, os.path.join(root, parent, vm_id), list(settings))]
    by_controller = {opt: point for point, kind, opts in found if kind == "cgroup" for opt in opts}
    dirs: dict[str, CgroupDir] = {}
    for name, value in settings:
        controller = name.split(".", 1)[0]
        hierarchy = by_controller.get(controller)
        if hierarchy is None:
            raise CgroupError(f"cgroup {name}: no cgroup v1 hierarchy carries the {controller!r} controller "
                              "(see /proc/mounts; or use --cgroup-version 2)")
        d = dirs.setdefault(hierarchy, CgroupDir(hierarchy, os.path.join(hierarchy, parent, vm_id),
                                                 v1_cpuset="cpuset" in _v1_controllers(found, hierarchy)))
        d.settings.append((name, value))
    return list(dirs.values())


def _v1_controllers(found: list[tuple[str, str, list[str]]], root: str) -> list[str]:
    return next(opts for point, kind, opts in found if point == root and kind == "cgroup")


def create(dirs: list[CgroupDir], cleanup: contextlib.ExitStack, version: int) -> None:
    """Make, fill and check every directory; each made directory is removed by ``cleanup``."""
    for d in dirs:
        if os.path.exists(d.path):
            raise CgroupError(f"cgroup {d.path} exists: a VM with this id runs, or one was left; remove it")
        _make_dirs(d, cleanup, version)
        for name, value in d.settings:
            write_checked(d.path, name, value)


def _make_dirs(d: CgroupDir, cleanup: contextlib.ExitStack, version: int) -> None:
    rel = os.path.relpath(d.path, d.hierarchy).split(os.sep)
    controllers = sorted({name.split(".", 1)[0] for name, _ in d.settings} - {"cgroup"})
    current = d.hierarchy
    for part in rel:
        if version == 2 and controllers:
            _enable_controllers(current, controllers, cleanup)
        parent, current = current, os.path.join(current, part)
        if os.path.isdir(current):
            continue
        try:
            os.mkdir(current)
        except OSError as exc:
            raise CgroupError(f"cgroup: cannot make {current}: {exc.strerror}") from None
        cleanup.callback(remove_dir, current, leaf=current == d.path)
        if d.v1_cpuset:  # a new v1 cpuset has no cpus or mems: no task may join until they are copied
            for knob in ("cpuset.cpus", "cpuset.mems"):
                write_checked(current, knob, _read(os.path.join(parent, knob)) or "")


def _enable_controllers(path: str, controllers: list[str], cleanup: contextlib.ExitStack) -> None:
    """cgroup v2: children of ``path`` get the controllers (cgroup-v2.rst, "Enabling and Disabling")."""
    available = _read(os.path.join(path, "cgroup.controllers")).split()
    enabled = _read(os.path.join(path, "cgroup.subtree_control")).split()
    for c in controllers:
        if c in enabled:
            continue
        if c not in available:
            raise CgroupError(f"cgroup: the {c!r} controller is not available in {path} "
                              f"(cgroup.controllers: {' '.join(available) or 'none'})")
        try:
            _write(os.path.join(path, "cgroup.subtree_control"), f"+{c}")
        except OSError as exc:
            raise CgroupError(f"cgroup: cannot enable {c!r} for the children of {path}: {exc.strerror}") from None
        cleanup.callback(_disable_controller, path, c)


def _disable_controller(path: str, controller: str) -> None:
    """Undo an enable we made; a sibling that uses the controller keeps it enabled (EBUSY), and that is theirs."""
    try:
        _write(os.path.join(path, "cgroup.subtree_control"), f"-{controller}")
    except OSError as exc:
        if exc.errno not in (errno.EBUSY, errno.ENOENT):
            raise


def write_checked(directory: str, name: str, value: str) -> None:
    """Write ``value`` to ``directory/name`` and compare what the kernel reads back."""
    path = os.path.join(directory, name)
    if not os.path.exists(path):
        raise CgroupError(f"cgroup {name}: no such file in {directory} (is the controller enabled?)")
    try:
        _write(path, value)
    except OSError as exc:
        raise CgroupError(f"cgroup {name}={value}: the kernel refused it: {exc.strerror}") from None
    got = _read(path)
    if not same_value(value, got):
        raise CgroupError(f"cgroup {name}: wrote {value!r}, reads back {got!r}")


def same_value(written: str, read: str) -> bool:
    """Whether the kernel's reading of a file matches what was written, in its own spelling.

    Sizes with K/M/G suffixes read back in bytes, memory limits are rounded to pages,
    CPU lists are re-spelled as ranges, and ``cpu.max`` fills in a period left out.
    """
    w, r = written.split(), read.split()
    if len(w) > len(r):
        return False
    return all(_same_token(a, b) for a, b in zip(w, r, strict=False))


def _same_token(w: str, r: str) -> bool:
    if w == r:
        return True
    size = _size(w)
    if size is not None and r.isdigit():
        return int(r) in (size, size - size % _PAGE)
    cpus_w, cpus_r = _cpu_list(w), _cpu_list(r)
    return cpus_w is not None and cpus_w == cpus_r


def _size(text: str) -> int | None:
    m = re.fullmatch(r"(\d+)([kKmMgGtT]?)", text)
    if not m:
        return None
    return int(m.group(1)) * _SIZE_SUFFIX.get(m.group(2).lower(), 1)


def _cpu_list(text: str) -> set[int] | None:
    if not re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", text):
        return None
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def attach(dirs: list[CgroupDir], pid: int) -> None:
    """Move ``pid`` (all its threads) into every directory."""
    for d in dirs:
        try:
            _write(os.path.join(d.path, "cgroup.procs"), str(pid))
        except OSError as exc:
            raise CgroupError(f"cgroup: cannot move the VMM into {d.path}: {exc.strerror}") from None


def join_existing(hierarchy: str, parent: str, pid: int) -> bool:
    """cgroup v2 with no ``--cgroup``: move into ``--parent-cgroup`` if it exists (jailer.md); whether it did."""
    path = os.path.join(hierarchy, parent)
    if not os.path.isdir(path):
        return False
    attach([CgroupDir(hierarchy, path)], pid)
    return True


def remove_dir(path: str, *, leaf: bool = True) -> None:
    """rmdir a cgroup once its last task has left (a reaped task leaves it within milliseconds).

    A parent (``leaf=False``, e.g. ``--parent-cgroup``) that is busy holds another VM's
    cgroup: it is left to whoever ends last, not waited for.
    """
    for _ in range(_RMDIR_TRIES):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise CgroupError(f"cgroup: cannot remove {path}: {exc.strerror}") from None
            if not leaf:
                return
            time.sleep(0.01)
    raise CgroupError(f"cgroup: {path} still has tasks; remove it when they end")


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _write(path: str, value: str) -> None:
    # One write(2) per value: cgroup files act on each write, and buffered text could split it.
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def oom_kills(d: CgroupDir) -> int:
    """How many of the cgroup's tasks the OOM killer ended (v2 memory.events, v1 memory.oom_control)."""
    for name in ("memory.events", "memory.oom_control"):
        try:
            text = _read(os.path.join(d.path, name))
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
    return 0
