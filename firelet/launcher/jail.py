"""A jailed launch on the launcher's side: firelet-jailer's parent steps around the fork.

The launcher prepares the jail and the cgroups (:func:`firelet.jailer.setup.prepare`),
forks, places the child in its cgroups and writes its pid file
(:func:`~firelet.jailer.setup.place`), then lets the child confine itself with
:func:`firelet.jailer.confine.confine`, the function firelet-jailer's child runs, and
waits for its word. A failure anywhere fails that launch request in one line that
names the step and leaves nothing; once the child ends, :meth:`Jailed.release` reads
its OOM kills and removes exactly what was made. No runtime is mounted in the jail:
the warm child has firelet-vmm imported before the fork (docs/launcher.md).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal

from firelet.errors import FireletError
from firelet.jailer import cgroups, confine, layout, setup
from firelet.jailer.flags import JailSpec
from firelet.launcher import protocol
from firelet.log import get_logger

log = get_logger("firelet.launcher")

#: The jail's directory and pid file are named as firelet-jailer names them for firelet-vmm.
EXEC_NAME = "firelet-vmm"
#: How long a child may take to confine itself (s); it takes milliseconds, and the loop waits meanwhile.
CONFINE_TIMEOUT_S = 10.0


def spec_for(vm_id: str, jail: protocol.Jail) -> JailSpec:
    return JailSpec(id=jail.id or vm_id, exec_name=EXEC_NAME, uid=jail.uid, gid=jail.gid,
                    chroot_base_dir=jail.chroot_base_dir, netns=jail.netns, new_pid_ns=jail.new_pid_ns,
                    cgroup_version=jail.cgroup_version, cgroups=tuple(jail.cgroups.items()),
                    parent_cgroup=jail.parent_cgroup.strip("/") if jail.parent_cgroup else None,
                    resource_limits=dict(jail.resource_limits))


#: Directories above the jails (``<base>/firelet-vmm``, ...) and parent cgroups the launcher made. Its
#: jails share them, so the jail that made one may end while another is inside: the last one out removes it.
_SHARED_DIRS: set[str] = set()


class Jailed:
    """A child's jail, from before its fork until its end (what the launcher made, and unmakes)."""

    def __init__(self, vm_id: str, jail: protocol.Jail) -> None:
        self.vm_id = vm_id
        self.spec = spec_for(vm_id, jail)
        self._cleanup = contextlib.ExitStack()
        where = layout.jail_for(self.spec.chroot_base_dir, EXEC_NAME, self.spec.id)
        above = _missing_dirs(os.path.dirname(where.base))  # <base>/firelet-vmm and up: shared
        above += [p for d in _planned_cgroups(self.spec) for p in _missing_dirs(os.path.dirname(d.path))]
        try:
            self.prepared = setup.prepare(self.spec, None, self._cleanup)
            _SHARED_DIRS.update(above)
            self._handshake = confine.Handshake()
            self._cleanup.callback(self._handshake.close)
        except BaseException as exc:
            self.abandon()
            raise self._refused(exc) from None

    @property
    def root(self) -> str:
        return self.prepared.jail.root

    def fork(self) -> int:
        """Fork the child (PID 1 of a new PID namespace with ``new_pid_ns``)."""
        pid = confine.fork(self.spec.new_pid_ns)
        if pid != 0:
            self._handshake.forked()
        return pid

    def confine_child(self) -> None:  # pragma: no cover - runs in the child
        """In the child, once it is no longer the launcher: wait for ``go``, confine, say so."""
        self._handshake.confine_child(self.prepared.confinement)
        self._handshake.done()

    def started(self, pid: int) -> None:
        """In the launcher after the fork: place the child, let it confine itself, wait for its word."""
        try:
            setup.place(self.prepared, pid, self._cleanup)
            self._handshake.go()
            failure = self._handshake.outcome(CONFINE_TIMEOUT_S)
        except BaseException as exc:
            _kill_and_wait(pid)
            self.abandon()
            raise self._refused(exc) from None
        if failure:
            _kill_and_wait(pid)
            self.abandon()
            raise protocol.ProtocolError(f"launch {self.vm_id}: {failure}")
        setup.release_netns(self.prepared.confinement)  # joined: the launcher keeps no fd per VMM

    def abandon(self) -> None:
        """The launch failed: unmake the jail (the parents it made only if no other jail uses them)."""
        try:
            self._cleanup.close()
        finally:
            _remove_unused(_SHARED_DIRS)

    def record(self) -> dict[str, object]:
        return {"jail": self.root, "cgroups": [d.path for d in self.prepared.dirs]}

    def release(self) -> dict[str, object]:
        """The child has been reaped: its OOM kills, then everything made for it goes."""
        out: dict[str, object] = {}
        try:
            kills = setup.oom_kills(self.prepared)
        except OSError:
            kills = 0
        if kills:
            out.update(oom_kills=kills, error=setup.oom_message(kills))
        try:
            self._cleanup.close()
        except (FireletError, OSError) as exc:
            log.warning("launcher: %s: cleaning up its jail: %s", self.vm_id, exc)
            out["cleanup_error"] = str(exc)
        _remove_unused(_SHARED_DIRS)
        return out

    def _refused(self, exc: BaseException) -> protocol.ProtocolError:
        if isinstance(exc, confine.StepError):
            return protocol.ProtocolError(f"launch {self.vm_id}: {exc}")
        if isinstance(exc, OSError):
            return protocol.ProtocolError(f"launch {self.vm_id}: jail: {exc.strerror or exc}")
        if isinstance(exc, FireletError):
            return protocol.ProtocolError(f"launch {self.vm_id}: jail: {exc}")
        raise exc


def _planned_cgroups(spec: JailSpec) -> list[cgroups.CgroupDir]:
    """The cgroups the jail will have (a plan that fails now fails again, named, in ``prepare``)."""
    if not spec.cgroups:
        return []
    try:
        return cgroups.plan(spec.cgroup_version, spec.parent_cgroup_path, spec.id, spec.cgroups)
    except (FireletError, OSError):
        return []


def _missing_dirs(path: str) -> list[str]:
    missing = []
    while not os.path.isdir(path) and path != os.path.dirname(path):
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def _remove_unused(dirs: set[str]) -> None:
    """rmdir each directory no jail uses any more (deepest first); one still in use stays listed."""
    for path in sorted(dirs, key=lambda p: -p.count("/")):
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EBUSY):  # a cgroup in use is EBUSY
                log.warning("launcher: cannot remove %s: %s", path, exc.strerror)
            continue
        dirs.discard(path)


def _kill_and_wait(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
