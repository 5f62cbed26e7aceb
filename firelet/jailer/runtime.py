"""What of the host the jail shows, read-only: the VMM's program and the Python that runs it.

Firecracker copies one static binary into its jail; firelet's VMM is a Python
script. The jail therefore shows, read-only and at their host paths (so the
script's ``#!`` line and every import resolve unchanged after ``pivot_root``):
the exec file, its interpreter (with the symlinks leading to it), the venv's
``pyvenv.cfg``, the standard library, the venv's site-packages, the firelet
package, and the program interpreter and shared libraries these load (read from
their ELF headers). Nothing else of the host is visible. See docs/jailer.md.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from dataclasses import dataclass, field

from firelet.errors import FireletError
from firelet.jailer import elf

#: Read by the dynamic loader to find libraries; not secret, saves it walking every directory.
LD_CACHE = "/etc/ld.so.cache"
#: The VMM's runtime dependencies with C extensions (pyproject.toml, [project] dependencies).
RUNTIME_PACKAGES = ("msgspec",)


class ExecFileError(FireletError):
    """The exec file cannot be run from inside a jail."""


@dataclass
class Exposure:
    """The read-only view: directories/files to bind at the same path, and the symlinks leading to them."""

    binds: dict[str, bool] = field(default_factory=dict)  # path -> is a directory
    symlinks: dict[str, str] = field(default_factory=dict)  # path -> link text
    env: dict[str, str] = field(default_factory=dict)

    def top_level(self) -> dict[str, str | None]:
        """First path components the jail root needs: name -> symlink text (None: a directory)."""
        out: dict[str, str | None] = {}
        for path in (*self.binds, *self.symlinks):
            top = path.strip("/").split("/")[0]
            out[top] = self.symlinks.get("/" + top)
        return out


def for_exec_file(exec_file: str) -> Exposure:
    """The exposure an exec file needs: an ELF program, or a Python script run by this jailer's interpreter."""
    with open(exec_file, "rb") as f:
        head = f.read(256)
    exposure = Exposure()
    if head.startswith(b"#!"):
        interpreter = head[2:].split(b"\n", 1)[0].split()[0].decode()
        _check_same_python(exec_file, interpreter)
        paths = [exec_file, interpreter, *python_paths()]
        exposure.env = python_env()
    else:
        paths = [exec_file]
    libs = elf.closure([os.path.realpath(p) for p in paths if os.path.isfile(os.path.realpath(p))]
                       + _extension_modules(head.startswith(b"#!")))
    for path in (*paths, *sorted(libs), LD_CACHE):
        if os.path.exists(path):
            add(exposure, path)
    return exposure


def _check_same_python(exec_file: str, interpreter: str) -> None:
    if os.path.realpath(interpreter) != os.path.realpath(sys.executable) or \
            os.path.dirname(os.path.dirname(interpreter)) != sys.prefix:
        raise ExecFileError(f"exec file {exec_file}: its interpreter {interpreter} is not the jailer's "
                            f"({sys.executable}); run the firelet-jailer installed beside it")


def python_paths() -> list[str]:
    """The interpreter's own files: the venv marker, the standard library, site-packages, firelet."""
    import firelet

    paths = []
    if sys.prefix != sys.base_prefix:
        paths.append(os.path.join(sys.prefix, "pyvenv.cfg"))
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        paths.append(sysconfig.get_paths()[key])
    paths.append(os.path.dirname(firelet.__file__))
    return paths


def python_env() -> dict[str, str]:
    """The VMM's whole environment (the jailer passes nothing else on, as Firecracker's).

    PYTHONPATH names the firelet checkout the jailer runs from, which the venv
    may not point at; no .pyc is written (the mounts are read-only anyway).
    """
    import firelet

    return {"PYTHONPATH": os.path.dirname(os.path.dirname(firelet.__file__)), "PYTHONDONTWRITEBYTECODE": "1"}


def _extension_modules(python: bool) -> list[str]:
    """The C extension modules the VMM may load: the standard library's and those of firelet's dependencies.

    Their shared libraries must load in the jail too. Walking all of site-packages
    would cost a second per start (and importlib.metadata 60 ms); the packages are few and listed.
    """
    if not python:
        return []
    dynload = sysconfig.get_config_var("DESTSHARED") or os.path.join(sysconfig.get_paths()["stdlib"], "lib-dynload")
    found = [os.path.join(dynload, f) for f in _listdir(dynload) if f.endswith(".so")]
    import importlib.util

    for package in RUNTIME_PACKAGES:
        spec = importlib.util.find_spec(package)
        for location in (spec.submodule_search_locations or []) if spec else []:
            found += [os.path.join(location, f) for f in _listdir(location) if f.endswith(".so")]
    return found


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def add(exposure: Exposure, path: str) -> None:
    """Expose ``path`` as the host resolves it: each symlink on the way is recreated, the end is bound."""
    path = os.path.abspath(path)
    for _ in range(40):  # ELOOP's limit (path_resolution(7))
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            prefix = "/" + "/".join(parts[:i])
            if _covered(exposure, prefix):
                return
            if os.path.islink(prefix):
                target = os.readlink(prefix)
                exposure.symlinks[prefix] = target
                resolved = os.path.normpath(os.path.join(os.path.dirname(prefix), target))
                path = os.path.join(resolved, *parts[i:])
                break
        else:
            exposure.binds[path] = os.path.isdir(path)
            for other in [b for b in exposure.binds if b != path and b.startswith(path + "/")]:
                del exposure.binds[other]  # now inside a bound directory
            return
    raise ExecFileError(f"{path}: too many levels of symbolic links")


def _covered(exposure: Exposure, path: str) -> bool:
    return any(path == b or path.startswith(b + "/") for b, is_dir in exposure.binds.items() if is_dir)
