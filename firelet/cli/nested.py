"""``firelet nested -- CMD``: run a command where /dev/kvm boots stock Linux guests.

The rig (see :mod:`firelet.devtools.nested`) boots a Linux under QEMU's software CPU
with AMD SVM, chroots into this machine's root and runs CMD with the same
cwd and environment plus ``FIRELET_IN_RIG=1``. The exit status is CMD's;
124 means the timeout hit, 125 that the rig itself failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from firelet.errors import UsageError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "nested",
        help="run a command inside the nested-KVM rig",
        description="Run CMD inside a TCG-emulated Linux with a real (nested) /dev/kvm, "
                    "chrooted into this machine's root (read-only) with the same cwd and environment.",
        epilog="exit status: CMD's own; 124 on timeout; 125 if the rig failed. "
               "FIRELET_KVM=direct|nested overrides the automatic choice made by tools that "
               "re-run themselves in the rig.",
    )
    p.add_argument("--timeout", type=float, default=3600.0, metavar="S",
                   help="kill the rig after S seconds (default 3600)")
    p.add_argument("--mem", type=int, default=4096, metavar="MiB", help="outer guest memory (default 4096)")
    p.add_argument("--smp", type=int, default=2, metavar="N", help="outer guest CPUs (default 2)")
    p.add_argument("--share", action="append", default=[], metavar="DIR",
                   help="a host directory to mount writable at the same path inside (repeatable)")
    p.add_argument("--cwd", default=None, metavar="DIR", help="where CMD runs (default: the current directory)")
    p.add_argument("-v", "--boot-log", action="store_true", dest="boot_log",
                   help="show the outer kernel's boot log")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from firelet.devtools.nested import run_in_rig

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError("no command given: firelet nested [OPTIONS] -- CMD [ARGS...]")
    return run_in_rig(
        command, timeout=args.timeout, shares=[Path(s) for s in args.share],
        mem_mib=args.mem, smp=args.smp, cwd=args.cwd, stdout=sys.stdout,
        interactive=_interactive(), verbose=args.boot_log,
    )


def _interactive() -> bool:
    from firelet.cli.terminal import is_interactive

    return is_interactive()
