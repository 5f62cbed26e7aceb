"""The parent's side of the jail: prepare it before the fork, place the child after, read its end.

Shared by ``firelet-jailer`` and the warm launcher's jailed launches, so that both make
(and unmake) exactly the same things: the network namespace's fd, the jail's
directories (:mod:`layout`), the cgroups (:mod:`cgroups`), the child's membership and the
pid file. Everything made is registered on the caller's cleanup stack, in an order
that unwinds correctly whether the child never ran, failed to confine itself, or ended.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from firelet.jailer import cgroups, layout
from firelet.jailer.confine import Confinement, step
from firelet.jailer.flags import JailSpec
from firelet.jailer.runtime import Exposure


@dataclass
class Prepared:
    """A jail ready for its child: where it is, its cgroups, and what the child confines itself with."""

    spec: JailSpec
    jail: layout.Jail
    dirs: list[cgroups.CgroupDir]
    confinement: Confinement


def prepare(spec: JailSpec, exposure: Exposure | None, cleanup: contextlib.ExitStack,
            dev_null: int | None = None) -> Prepared:
    """Open the netns, lay out the jail, make and fill the cgroups; each failure names its step.

    ``exposure`` is the read-only runtime to mount in the jail (None: none is mounted).
    """
    jail = layout.jail_for(spec.chroot_base_dir, spec.exec_name, spec.id)
    confinement = Confinement(root=jail.root, uid=spec.uid, gid=spec.gid, netns=spec.netns, exposure=exposure,
                              resource_limits=dict(spec.resource_limits), dev_null=dev_null)
    if spec.netns is not None:
        with step("netns"):
            confinement.netns_fd = os.open(spec.netns, os.O_RDONLY | os.O_CLOEXEC)
            cleanup.callback(release_netns, confinement)
    with step("cgroups"):
        dirs = cgroups.plan(spec.cgroup_version, spec.parent_cgroup_path, spec.id, spec.cgroups) \
            if spec.cgroups else []
    with step("jail"):
        layout.prepare(jail, spec.uid, spec.gid, exposure.top_level() if exposure else {}, cleanup)
    with step("cgroups"):
        cgroups.create(dirs, cleanup, spec.cgroup_version)
    return Prepared(spec, jail, dirs, confinement)


def place(prepared: Prepared, pid: int, cleanup: contextlib.ExitStack) -> None:
    """After the fork, before ``go``: the child joins its cgroups; its pid file is written."""
    spec = prepared.spec
    with step("cgroups"):
        cgroups.attach(prepared.dirs, pid)
        if spec.cgroup_version == 2 and not spec.cgroups:
            _join_parent_if_any(spec.parent_cgroup_path, pid)
    with step("pid file"):
        layout.write_pid_file(prepared.jail, pid, cleanup)


def oom_kills(prepared: Prepared) -> int:
    """How many of the child's tasks the OOM killer ended (read before the cgroups go)."""
    return sum(cgroups.oom_kills(d) for d in prepared.dirs)


def oom_message(kills: int) -> str:
    return (f"the VMM ran out of memory: the OOM killer ended it ({kills} kill(s) in its cgroup; "
            "raise memory.max or lower the guest's memory)")


def _join_parent_if_any(parent: str, pid: int) -> None:
    roots = [point for point, kind, _ in cgroups.mounts() if kind == "cgroup2"]
    if roots:
        cgroups.join_existing(roots[0], parent, pid)


def release_netns(confinement: Confinement) -> None:
    """The parent's handle on the network namespace, once the child has joined it (or never will)."""
    fd, confinement.netns_fd = confinement.netns_fd, None
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
