"""The last steps before the VMM runs: limits, identity, file descriptors, session.

In the order Firecracker's jailer takes them (docs/jailer.md, "Jailer Operation"),
adapted: rlimits are set in the VMM's own process, and ``no_new_privs`` is set
after the uid/gid change so that no exec can gain privileges again.
"""

from __future__ import annotations

import os
import resource

from firelet.jailer import syscalls as sc
from firelet.jailer.flags import DEFAULT_NO_FILE, RESOURCES

_NR_OPEN = 1 << 20  # the kernel's default fs.nr_open: no descriptor number reaches it


def set_rlimits(limits: dict[str, int]) -> None:
    """Hard and soft limits alike (jailer.md, --resource-limit); no-file defaults to 2048."""
    limits = {"no-file": DEFAULT_NO_FILE, **limits}
    for name, value in limits.items():
        resource.setrlimit(getattr(resource, RESOURCES[name]), (value, value))


def drop_privileges(uid: int, gid: int) -> None:
    """Become uid/gid with no supplementary groups and no capabilities, for good."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)  # a non-zero uid clears the capability sets (capabilities(7))
    sc.set_no_new_privs()


def close_inherited_fds(keep: int) -> None:
    """Close every descriptor above stderr but ``keep`` (close-on-exec, it reports a failed exec)."""
    os.closerange(3, keep)
    os.closerange(keep + 1, _NR_OPEN)  # close_range(2) underneath: one call, whatever the limit was


def daemonize(dev_null: int) -> None:
    """A new session, no controlling terminal, stdio on /dev/null (jailer.md, --daemonize)."""
    os.setsid()
    for fd in (0, 1, 2):
        os.dup2(dev_null, fd)
    os.close(dev_null)
