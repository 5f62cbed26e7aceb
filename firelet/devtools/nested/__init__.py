"""The nested-KVM rig: run a command where ``/dev/kvm`` can boot stock Linux guests.

On a machine whose ``/dev/kvm`` cannot (see :mod:`firelet.devtools.nested.detect`), the
rig boots Debian's generic kernel under QEMU's software CPU with AMD SVM, loads
``kvm-amd`` there and ``chroot``s into the host's own root (read-only over 9p),
so the host's Python, packages and checkout run unchanged with a real KVM.
Heavy modules are imported on first use to keep ``import firelet`` light.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import BinaryIO, TextIO


def run_in_rig(argv: list[str], *, timeout: float, shares: list[Path] | tuple[Path, ...] = (),
               mem_mib: int = 4096, smp: int = 2, cwd: Path | str | None = None,
               stdout: TextIO | BinaryIO | None = None, interactive: bool = False,
               verbose: bool = False) -> int:
    """Run ``argv`` in the rig and return its exit status.

    Raises :class:`firelet.devtools.nested.runner.RigTimeout` (exit code 124) past
    ``timeout`` seconds and :class:`firelet.devtools.nested.runner.RigFailed` (125) when
    the outer Linux dies without reporting a status.
    """
    from firelet.devtools.nested.runner import run_in_rig as _run

    return _run(argv, timeout=timeout, shares=shares, mem_mib=mem_mib, smp=smp, cwd=cwd,
                stdout=stdout if stdout is not None else sys.stdout,
                interactive=interactive, verbose=verbose)
