"""``firelet launcher``: the warm launcher process (docs/launcher.md)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("launcher", help="a warm parent that forks firelet-vmm processes on request",
                       description="Import the VMM once, then fork a firelet-vmm per launch request received "
                                   "on a Unix socket (JSON lines; docs/launcher.md). SIGTERM stops it and its VMMs.")
    p.add_argument("--socket", required=True, metavar="PATH", help="the launcher's Unix socket")
    p.add_argument("--grace", type=float, default=5.0, metavar="S",
                   help="at shutdown, SIGKILL the VMMs that have not ended S seconds after SIGTERM (default 5)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from firelet.errors import UsageError
    from firelet.launcher.server import serve

    if args.grace < 0:
        raise UsageError("--grace: expected a number of seconds, 0 or more")
    return serve(args.socket, grace_s=args.grace)
