"""``firelet fleet``: many microVMs from one config file, through a warm launcher (docs/launcher.md)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from firelet.jailer.flags import add_jail_flags


def register(sub: Any) -> None:
    p = sub.add_parser("fleet", help="launch, list and stop many microVMs through a warm launcher",
                       description="Many microVMs from one Firecracker config file, each in DIR/<id>/ (API socket, "
                                   "config, log, metrics, console, private drive copies), forked by a warm "
                                   "launcher (started in the background when none answers).")
    p.add_argument("--dir", metavar="DIR", help="the fleet's directory (default: $XDG_RUNTIME_DIR/firelet-fleet, "
                                                "or /run/firelet/fleet as root)")
    p.add_argument("--launcher", metavar="SOCKET", help="the launcher's socket (default: DIR/launcher.sock)")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = actions.add_parser("up", help="launch N microVMs from one config file")
    up.add_argument("count", type=int, metavar="N")
    up.add_argument("--config", required=True, metavar="FILE", help="Firecracker's JSON config file")
    up.add_argument("--prefix", default="vm", help="ids are PREFIX-1, PREFIX-2, ... (default vm)")
    up.add_argument("--timeout", type=float, default=120.0, metavar="S",
                    help="how long each may take to start its VM (default 120)")
    up.add_argument("--memory-check", action="store_true",
                    help="refuse members whose whole guest RAM the host's available memory cannot hold "
                         "(guest RAM is lazy: without this, members may add up to more than the host has)")
    jail = up.add_argument_group("jail", "confine each microVM as firelet-jailer does (its flags; --uid and --gid "
                                         "turn it on): the fleet lays each one's files in its jail's root")
    add_jail_flags(jail, required=False, netns=False)
    up.set_defaults(func=run_up)
    ls = actions.add_parser("list", help="the microVMs: id, pid, state, uptime, CPU, memory")
    ls.set_defaults(func=run_list)
    stop = actions.add_parser("stop", help="stop one microVM, or all (and then the launcher)")
    which = stop.add_mutually_exclusive_group(required=True)
    which.add_argument("id", nargs="?", help="the microVM to stop")
    which.add_argument("--all", action="store_true", help="every microVM, then the launcher")
    stop.add_argument("--keep-launcher", action="store_true", help="with --all: leave the launcher running")
    stop.add_argument("--grace", type=float, default=5.0, metavar="S", help="SIGKILL after S seconds (default 5)")
    stop.set_defaults(func=run_stop)


def _fleet(args: argparse.Namespace, *, start: bool = False) -> Any:
    from firelet.launcher.fleet import Fleet

    return Fleet.open(args.dir, launcher_socket=args.launcher, start=start)


def _jail(args: argparse.Namespace) -> dict[str, Any] | None:
    from firelet.errors import UsageError
    from firelet.jailer.flags import jail_options

    if args.uid is None and args.gid is None:
        others = [flag for flag, value in (("--new-pid-ns", args.new_pid_ns), ("--cgroup", args.cgroup),
                                           ("--parent-cgroup", args.parent_cgroup),
                                           ("--resource-limit", args.resource_limit)) if value]
        if others:
            raise UsageError(f"fleet up: {others[0]} confines the microVMs: give --uid and --gid too")
        return None
    if args.uid is None or args.gid is None:
        raise UsageError("fleet up: a jail needs both --uid and --gid")
    return jail_options(args)


def run_up(args: argparse.Namespace) -> int:
    jail = _jail(args)
    fleet = _fleet(args, start=True)
    tty = sys.stderr.isatty()

    def progress(ready: int, failed: int, total: int) -> None:
        line = f"fleet: {ready}/{total} started, {failed} failed"
        print(f"\r{line}" if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)

    last: list[tuple[int, int]] = []

    def quiet_progress(ready: int, failed: int, total: int) -> None:  # a line per change when not a terminal
        if not last or last[-1] != (ready, failed):
            last.append((ready, failed))
            progress(ready, failed, total)

    try:
        members = fleet.up(args.count, args.config, prefix=args.prefix, ready_timeout_s=args.timeout,
                           progress=progress if tty else quiet_progress, memory_check=args.memory_check,
                           jail=jail)
    finally:
        fleet.close()
    if tty:
        print(file=sys.stderr)
    for member in members:
        if member.error is not None:
            print(f"fleet: failed: {member.error}", file=sys.stderr)
        else:
            print(f"{member.id}\t{member.pid}\t{member.api_sock}")
    return 0 if all(m.error is None for m in members) else 1


def run_list(args: argparse.Namespace) -> int:
    fleet = _fleet(args)
    try:
        vms = fleet.list()
    finally:
        fleet.close()
    print(format_table(vms))
    return 0


def format_table(vms: list[dict[str, Any]]) -> str:
    rows = [("ID", "PID", "STATE", "UPTIME", "CPU", "RSS", "USS")]
    for vm in vms:
        state = vm["state"] if vm["state"] == "running" else (
            f"exited {vm['exit_code']}" if vm["state"] == "exited" else f"killed {vm['exit_signal']}")
        rows.append((vm["id"], str(vm["pid"]), state, f"{vm['uptime_s']:.1f}s", f"{vm['cpu_s']:.2f}s",
                     f"{vm['rss_kib'] / 1024:.1f}M", f"{vm['uss_kib'] / 1024:.1f}M"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def run_stop(args: argparse.Namespace) -> int:
    from firelet.launcher.socket_path import LauncherError

    fleet = _fleet(args)
    try:
        if args.all and not args.keep_launcher:
            records = fleet.stop(grace_s=args.grace)
            fleet.launcher.shutdown(grace_s=args.grace)
        else:
            if args.id is not None and not any(vm["id"] == args.id for vm in fleet.list()):
                raise LauncherError(f"fleet stop: no microVM with id {args.id!r} (see `firelet fleet list`)")
            records = fleet.stop(args.id, grace_s=args.grace)
    finally:
        fleet.close()
    print(format_table(records))
    return 0
