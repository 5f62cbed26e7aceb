"""The jailer's command line: Firecracker's jailer flags, parsed and validated.

The flags and their meaning are those of Firecracker's ``jailer`` (docs/jailer.md,
"Jailer Usage"), so that a script that starts Firecracker through its jailer works
with firelet by changing the two program names. Everything after ``--`` goes to the VMM.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn

from firelet import __version__
from firelet.errors import UsageError

DEFAULT_CHROOT_BASE = "/srv/jailer"  # jailer.md: "The default is /srv/jailer"
ID_RE = re.compile(r"[A-Za-z0-9-]{1,64}")  # jailer.md: alphanumerics and hyphens, at most 64
#: jailer.md, --resource-limit: the resources that can be bounded, and the rlimit each names.
RESOURCES = {"fsize": "RLIMIT_FSIZE", "no-file": "RLIMIT_NOFILE"}
DEFAULT_NO_FILE = 2048  # jailer.md, "Jailer Operation": no-file is bounded to 2048 when no limit is given
CGROUP_FILE_RE = re.compile(r"[a-z_][a-z0-9_]*\.[a-z0-9_.]+")  # controller.knob, e.g. memory.max, cpu.cfs_quota_us


@dataclass(frozen=True)
class JailSpec:
    """The jail alone: what ``firelet-jailer`` and a jailed warm launch both prepare (checked for form)."""

    id: str
    exec_name: str  # names the jail's directory, its pid file and the default parent cgroup
    uid: int
    gid: int
    chroot_base_dir: str = DEFAULT_CHROOT_BASE
    netns: str | None = None
    new_pid_ns: bool = False
    cgroup_version: int = 1
    cgroups: tuple[tuple[str, str], ...] = ()
    parent_cgroup: str | None = None
    resource_limits: dict[str, int] = field(default_factory=dict)

    @property
    def parent_cgroup_path(self) -> str:
        """Relative to each hierarchy's root; jailer.md: defaults to the exec file's name."""
        return self.parent_cgroup if self.parent_cgroup is not None else self.exec_name


@dataclass(frozen=True)
class JailerArgs:
    """What the jailer was asked to do, checked for form (not yet against the host)."""

    id: str
    exec_file: str
    uid: int
    gid: int
    chroot_base_dir: str = DEFAULT_CHROOT_BASE
    netns: str | None = None
    daemonize: bool = False
    new_pid_ns: bool = False
    cgroup_version: int = 1
    cgroups: tuple[tuple[str, str], ...] = ()
    parent_cgroup: str | None = None
    resource_limits: dict[str, int] = field(default_factory=dict)
    vmm_args: tuple[str, ...] = ()

    @property
    def exec_name(self) -> str:
        return os.path.basename(self.exec_file)

    @property
    def parent_cgroup_path(self) -> str:
        return self.jail_spec().parent_cgroup_path

    def jail_spec(self) -> JailSpec:
        return JailSpec(id=self.id, exec_name=self.exec_name, uid=self.uid, gid=self.gid,
                        chroot_base_dir=self.chroot_base_dir, netns=self.netns, new_pid_ns=self.new_pid_ns,
                        cgroup_version=self.cgroup_version, cgroups=self.cgroups, parent_cgroup=self.parent_cgroup,
                        resource_limits=self.resource_limits)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see firelet-jailer --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="firelet-jailer", allow_abbrev=False,
                description="Start firelet-vmm confined as Firecracker's jailer confines Firecracker.",
                epilog="Arguments after -- are passed to the VMM.")
    p.add_argument("--id", required=True, help="unique VM id: letters, digits and '-', at most 64")
    p.add_argument("--exec-file", required=True, metavar="PATH", help="the VMM to run (e.g. firelet-vmm)")
    add_jail_flags(p, required=True)
    p.add_argument("--daemonize", action="store_true", help="setsid and send stdio to /dev/null")
    p.add_argument("--version", action="version", version=f"firelet-jailer v{__version__}")
    return p


def add_jail_flags(p: argparse.ArgumentParser | argparse._ArgumentGroup, *, required: bool,
                   netns: bool = True) -> None:
    """The jail's own flags (not --id, --exec-file, --daemonize): firelet-jailer's and `fleet up`'s."""
    p.add_argument("--uid", required=required, type=_uint(), help="user the VMM runs as")
    p.add_argument("--gid", required=required, type=_uint(), help="group the VMM runs as")
    p.add_argument("--chroot-base-dir", default=DEFAULT_CHROOT_BASE, metavar="DIR",
                   help=f"where jails are built (default {DEFAULT_CHROOT_BASE})")
    if netns:
        p.add_argument("--netns", metavar="PATH", help="network namespace to join, e.g. /var/run/netns/NAME")
    p.add_argument("--new-pid-ns", action="store_true", help="run the VMM as PID 1 of a new PID namespace")
    p.add_argument("--cgroup-version", default="1", choices=["1", "2"], help="cgroup hierarchy to use (default 1)")
    p.add_argument("--cgroup", action="append", default=[], metavar="FILE=VALUE",
                   help="a cgroup file to set, e.g. memory.max=256M (repeatable)")
    p.add_argument("--parent-cgroup", metavar="PATH", help="cgroup under which <id> is made (default: exec name)")
    p.add_argument("--resource-limit", action="append", default=[], metavar="RESOURCE=VALUE",
                   help="fsize=BYTES or no-file=N (repeatable)")


def jail_options(ns: argparse.Namespace) -> dict[str, object]:
    """The parsed jail flags as a warm launch's ``jail`` (firelet.launcher.protocol.Jail), checked for form."""
    options: dict[str, object] = {
        "uid": ns.uid, "gid": ns.gid, "chroot_base_dir": os.path.abspath(ns.chroot_base_dir),
        "new_pid_ns": ns.new_pid_ns, "cgroup_version": int(ns.cgroup_version),
        "cgroups": dict(parse_cgroup(c) for c in ns.cgroup),
        "resource_limits": dict(parse_resource_limit(r) for r in ns.resource_limit)}
    if getattr(ns, "netns", None) is not None:
        options["netns"] = ns.netns
    if ns.parent_cgroup is not None:
        options["parent_cgroup"] = _check_parent(ns.parent_cgroup)
    return options


def _uint() -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.isdigit() or int(text) > 0xFFFF_FFFE:
            raise argparse.ArgumentTypeError(f"expected a number from 0 to 4294967294, got {text!r}")
        return int(text)
    return parse


def parse(argv: list[str]) -> JailerArgs:
    """Parse the jailer's argv (without the program name); raises UsageError in one line."""
    if "--" in argv:
        cut = argv.index("--")
        own, vmm_args = argv[:cut], argv[cut + 1:]
    else:
        own, vmm_args = argv, []
    ns = build_parser().parse_args(own)
    vm_id = ns.id if isinstance(ns.id, str) else "--"  # argparse turns the value "--" (--id=--) into []
    check_id(vm_id)
    return JailerArgs(
        id=vm_id, exec_file=ns.exec_file, uid=ns.uid, gid=ns.gid, chroot_base_dir=ns.chroot_base_dir,
        netns=ns.netns, daemonize=ns.daemonize, new_pid_ns=ns.new_pid_ns, cgroup_version=int(ns.cgroup_version),
        cgroups=tuple(parse_cgroup(c) for c in ns.cgroup), parent_cgroup=_check_parent(ns.parent_cgroup),
        resource_limits=dict(parse_resource_limit(r) for r in ns.resource_limit), vmm_args=tuple(vmm_args),
    )


def check_id(vm_id: str) -> None:
    if not ID_RE.fullmatch(vm_id):
        raise UsageError(f"--id {vm_id!r}: use 1 to 64 letters, digits or '-'")


def parse_cgroup(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not CGROUP_FILE_RE.fullmatch(name) or not value or "\n" in value:
        raise UsageError(f"--cgroup {text!r}: expected <controller>.<file>=<value>, e.g. memory.max=268435456")
    return name, value


def parse_resource_limit(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    if not sep or name not in RESOURCES:
        raise UsageError(f"--resource-limit {text!r}: expected fsize=BYTES or no-file=N")
    if not value.isdigit():
        raise UsageError(f"--resource-limit {text!r}: the value must be a non-negative integer")
    return name, int(value)


def _check_parent(path: str | None) -> str | None:
    if path is None:
        return None
    parts = path.strip("/").split("/")
    if not path.strip("/") or any(p in ("", ".", "..") for p in parts):
        raise UsageError(f"--parent-cgroup {path!r}: expected a relative path without '.' or '..' parts")
    return "/".join(parts)
