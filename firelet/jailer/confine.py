"""The child's side of the jail: what a forked process does to confine itself, and its handshake.

One code path for every confined VMM: ``firelet-jailer``'s child runs :func:`confine` and
then execs the VMM; the warm launcher's child runs the same :func:`confine` and then calls
firelet-vmm's ``main`` in-process (docs/launcher.md, "Jailed launches"). The steps, in
order (docs/jailer.md, "The sequence"): join the network namespace, a private mount
namespace with the jail's root bound on itself, ``/dev``, the read-only runtime (when
there is one), ``pivot_root``, rlimits, the session (``--daemonize``), uid/gid with
no_new_privs, and only the kept descriptors. Each failure names its step in one line.

The parent and the child meet through :class:`Handshake`: the child waits for ``go``
(sent once it sits in its cgroups) and reports a failure on the error pipe; the pipe
closing without a word means it confined itself.
"""

from __future__ import annotations

import contextlib
import os
import select
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NoReturn

from firelet.errors import FireletError
from firelet.jailer import mounts, privileges
from firelet.jailer import syscalls as sc
from firelet.jailer.runtime import Exposure

#: The longest message a child's failure report may take (one pipe write is atomic up to PIPE_BUF).
_REPORT_BYTES = 4000


class StepError(FireletError):
    """A step of the jail's sequence failed; the message names it."""


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    """Turn any failure inside into one line that names the step."""
    try:
        yield
    except StepError:
        raise
    except FireletError as exc:
        message = str(exc)
        raise StepError(message if message.startswith(name.rstrip("s")) else f"{name}: {message}") from None
    except OSError as exc:
        where = f" {exc.filename}:" if exc.filename else ""
        raise StepError(f"{name}:{where} {exc.strerror or exc}") from None


@dataclass
class Confinement:
    """Everything the child needs to confine itself (opened or computed by the parent before the fork)."""

    root: str  # the jail's root on the host: "/" once confined
    uid: int
    gid: int
    netns: str | None = None  # the network namespace's path (for messages); its fd is netns_fd
    netns_fd: int | None = None
    exposure: Exposure | None = None  # the read-only runtime to mount; None: none (a warm child has it loaded)
    resource_limits: dict[str, int] = field(default_factory=dict)
    dev_null: int | None = None  # set: become a daemon (new session, stdio on /dev/null)


def confine(c: Confinement, keep: int) -> None:  # pragma: no cover - runs in the child
    """Confine the calling (freshly forked, single-threaded) process; every fd but 0-2 and ``keep`` closes."""
    if c.netns_fd is not None:
        with step(f"netns {c.netns}"):
            sc.setns(c.netns_fd, sc.CLONE_NEWNET)
            os.close(c.netns_fd)
    with step("mount namespace"):
        sc.unshare(sc.CLONE_NEWNS)
        mounts.make_private()
        mounts.bind_root(c.root)
    with step("/dev"):
        mounts.make_dev(c.root, c.uid, c.gid)
    if c.exposure is not None:
        with step("runtime mounts"):
            mounts.expose_runtime(c.root, c.exposure)
    with step("pivot_root"):
        mounts.pivot(c.root)
    with step("rlimits"):
        privileges.set_rlimits(c.resource_limits)
    if c.dev_null is not None:
        with step("daemonize"):
            privileges.daemonize(c.dev_null)
    with step("privileges"):
        privileges.drop_privileges(c.uid, c.gid)
    with step("file descriptors"):
        privileges.close_inherited_fds(keep=keep)


def fork(new_pid_ns: bool) -> int:
    """``os.fork``; with ``new_pid_ns`` the child is PID 1 of a new PID namespace, and only it.

    ``unshare(CLONE_NEWPID)`` moves the caller's *next* children into a new namespace
    (pid_namespaces(7)); the parent then goes back to its own for later forks
    (setns(2) to one's own active namespace is allowed), so a launcher that jails one
    VMM this way does not put every later one into it.
    """
    if not new_pid_ns:
        return os.fork()
    own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        sc.unshare(sc.CLONE_NEWPID)
        try:
            pid = os.fork()
        except BaseException:
            sc.setns(own, sc.CLONE_NEWPID)
            raise
        if pid != 0:
            sc.setns(own, sc.CLONE_NEWPID)
        return pid
    finally:
        os.close(own)


class Handshake:
    """Two pipes between the parent and the child it forks to be confined."""

    def __init__(self) -> None:
        self.errors_r, self.errors_w = os.pipe2(os.O_CLOEXEC)
        self.go_r, self.go_w = os.pipe2(os.O_CLOEXEC)

    # -- the parent's side ------------------------------------------------------------------
    def forked(self) -> None:
        """In the parent, right after the fork: drop the child's ends."""
        os.close(self.errors_w)
        os.close(self.go_r)
        self.errors_w = self.go_r = -1

    def go(self) -> None:
        """The child sits in its cgroups: let it confine itself."""
        os.write(self.go_w, b"g")
        os.close(self.go_w)
        self.go_w = -1

    def outcome(self, timeout_s: float | None = None) -> str:
        """The child's failure, or "" once it confined itself (exec'd, or closed the pipe).

        With ``timeout_s``, a child that neither reports nor finishes in time is a failure too.
        """
        data = b""
        try:
            while True:
                if timeout_s is not None and not select.select([self.errors_r], [], [], timeout_s)[0]:
                    return f"jail: the VMM's process did not confine itself within {timeout_s:g} s"
                chunk = os.read(self.errors_r, 4096)
                if not chunk:
                    return data.decode(errors="replace")
                data += chunk
        finally:
            self.close()

    def close(self) -> None:
        """Close whatever of the pipes is still open in the parent (on any failure path too, a failed fork's)."""
        for name in ("go_w", "errors_r", "go_r", "errors_w"):
            fd = getattr(self, name)
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, name, -1)

    # -- the child's side -------------------------------------------------------------------
    def confine_child(self, c: Confinement) -> None:  # pragma: no cover - runs in the child
        """In the child: wait for ``go``, then :func:`confine`; any failure is reported and ends the child.

        Returns confined, with only the error pipe open beside 0-2 (close-on-exec; see :meth:`done`).
        """
        try:
            os.close(self.errors_r)
            os.close(self.go_w)
            if os.read(self.go_r, 1) != b"g":
                self.fail("jail: the parent went away before the VMM was in its cgroups")
            os.close(self.go_r)
            confine(c, keep=self.errors_w)
        except StepError as exc:
            self.fail(str(exc))
        except BaseException as exc:  # the child must report whatever stopped it, then end
            self.fail(f"jail: {type(exc).__name__}: {exc}")

    def done(self) -> None:  # pragma: no cover - runs in the child
        """In a child that does not exec: tell the parent it is confined."""
        os.close(self.errors_w)

    def fail(self, message: str) -> NoReturn:  # pragma: no cover - runs in the child
        try:
            os.write(self.errors_w, message.encode()[:_REPORT_BYTES])
        finally:
            os._exit(1)
