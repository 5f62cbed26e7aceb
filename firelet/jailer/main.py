"""``firelet-jailer``: start a VMM confined as Firecracker's jailer confines Firecracker.

The sequence (docs/jailer.md; Firecracker's docs/jailer.md, "Jailer Operation"):
validate, prepare the jail and the cgroups, fork the VMM's process (PID 1 of a new
PID namespace with ``--new-pid-ns``), place it in the cgroups, and let it confine
itself (network namespace, mount namespace, pivot_root, rlimits, uid/gid with
no_new_privs, descriptors, session) and exec the VMM. The jailer's own process
stays outside as the VMM's supervisor: it forwards signals, and when the VMM
ends it reports an OOM kill and removes everything it made (cgroups, the jail's
mount points and pid file; mounts die with the VMM's namespace). Any failure
names its step in one line and unwinds the same cleanup stack.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

from firelet.errors import FireletError
from firelet.jailer import cgroups, flags, layout, mounts, privileges, runtime
from firelet.jailer import syscalls as sc

PROG = "firelet-jailer"
#: Signals a supervisor passes on to the VMM, so that stopping the jailer stops the VM.
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
STOPPING = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class StepError(FireletError):
    """A step of the jailer's sequence failed; the message names it."""


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
class Child:
    """What the forked process needs to confine itself and exec the VMM."""

    args: flags.JailerArgs
    jail: layout.Jail
    exposure: runtime.Exposure
    netns_fd: int | None
    dev_null: int | None
    argv: list[str]


def console() -> int:
    return main(sys.argv[1:])


def main(argv: list[str]) -> int:
    start_us = time.time_ns() // 1000
    for signum in STOPPING:  # until the VMM runs, a stop unwinds what was made
        signal.signal(signum, _interrupted)
    try:
        return run(flags.parse(argv), start_us)
    except FireletError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code


def run(args: flags.JailerArgs, start_us: int) -> int:
    with contextlib.ExitStack() as cleanup:
        with step("exec file"):
            _check_exec_file(args.exec_file)
            exposure = runtime.for_exec_file(args.exec_file)
        netns_fd = None
        if args.netns is not None:
            with step("netns"):
                netns_fd = os.open(args.netns, os.O_RDONLY | os.O_CLOEXEC)
                cleanup.callback(os.close, netns_fd)
        dev_null = None
        if args.daemonize:
            dev_null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
            cleanup.callback(_close_quietly, dev_null)
        jail = layout.jail_for(args.chroot_base_dir, args.exec_name, args.id)
        with step("cgroups"):
            dirs = cgroups.plan(args.cgroup_version, args.parent_cgroup_path, args.id, args.cgroups) \
                if args.cgroups else []
        with step("jail"):
            layout.prepare(jail, args.uid, args.gid, exposure.top_level(), cleanup)
        with step("cgroups"):
            cgroups.create(dirs, cleanup, args.cgroup_version)
        argv = [args.exec_file, f"--id={args.id}", f"--start-time-us={start_us}", "--start-time-cpu-us=0",
                *args.vmm_args]
        child = Child(args, jail, exposure, netns_fd, dev_null, argv)
        with step("fork"):
            pid, errors, go = _spawn(child)
        reaped = _Reaper(pid)
        cleanup.callback(reaped.kill)
        with step("cgroups"):
            cgroups.attach(dirs, pid)
            if args.cgroup_version == 2 and not args.cgroups:
                _join_parent_if_any(args.parent_cgroup_path, pid)
        with step("pid file"):
            layout.write_pid_file(jail, pid, cleanup)
        os.write(go, b"g")
        os.close(go)
        failure = _read_all(errors)
        if failure:
            reaped.wait()
            raise StepError(failure)
        if args.daemonize and dev_null is not None:
            _detach(dev_null)
        code = reaped.supervise()
        oom = sum(cgroups.oom_kills(d) for d in dirs)
    if oom:
        print(f"{PROG}: error: the VMM ran out of memory: the OOM killer ended it "
              f"({oom} kill(s) in its cgroup; raise memory.max or lower the guest's memory)", file=sys.stderr)
    elif code > 128:
        print(f"{PROG}: the VMM was killed by {signal.Signals(code - 128).name}", file=sys.stderr)
    return code


def _interrupted(signum: int, _frame: object) -> None:
    raise StepError(f"stopped by {signal.Signals(signum).name} before the VMM ran; nothing was left behind")


def _check_exec_file(path: str) -> None:
    if not os.path.isabs(path):
        raise StepError(f"exec file {path}: give an absolute path")
    if not os.path.isfile(path):
        raise StepError(f"exec file {path}: no such file")
    if not os.access(path, os.X_OK) or not os.stat(path).st_mode & 0o111:
        raise StepError(f"exec file {path}: not executable (chmod +x it)")


def _join_parent_if_any(parent: str, pid: int) -> None:
    roots = [point for point, kind, _ in cgroups.mounts() if kind == "cgroup2"]
    if roots:
        cgroups.join_existing(roots[0], parent, pid)


def _spawn(child: Child) -> tuple[int, int, int]:
    """Fork the VMM's process; it waits for ``go`` (once it is in its cgroups) and reports failures on ``errors``."""
    errors_r, errors_w = os.pipe2(os.O_CLOEXEC)
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    if child.args.new_pid_ns:
        sc.unshare(sc.CLONE_NEWPID)  # the next process forked is PID 1 of a new namespace
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, which never returns
        message = "jail: the jailer went away"
        try:
            os.close(errors_r)
            os.close(go_w)
            if os.read(go_r, 1) == b"g":
                os.close(go_r)
                _confine_and_exec(child, errors_w)
        except StepError as exc:
            message = str(exc)
        except BaseException as exc:  # the child must report whatever stopped it, then end
            message = f"jail: {type(exc).__name__}: {exc}"
        try:
            os.write(errors_w, message.encode()[:4000])
        finally:
            os._exit(1)
    os.close(errors_w)
    os.close(go_r)
    return pid, errors_r, go_w


def _confine_and_exec(child: Child, errors: int) -> None:  # pragma: no cover - runs in the child
    args, root = child.args, child.jail.root
    if child.netns_fd is not None:
        with step(f"netns {args.netns}"):
            sc.setns(child.netns_fd, sc.CLONE_NEWNET)
            os.close(child.netns_fd)
    with step("mount namespace"):
        sc.unshare(sc.CLONE_NEWNS)
        mounts.make_private()
        mounts.bind_root(root)
    with step("/dev"):
        mounts.make_dev(root, args.uid, args.gid)
    with step("runtime mounts"):
        mounts.expose_runtime(root, child.exposure)
    with step("pivot_root"):
        mounts.pivot(root)
    with step("rlimits"):
        privileges.set_rlimits(args.resource_limits)
    if child.dev_null is not None:
        with step("daemonize"):
            privileges.daemonize(child.dev_null)
    with step("privileges"):
        privileges.drop_privileges(args.uid, args.gid)
    with step("file descriptors"):
        privileges.close_inherited_fds(keep=errors)
    with step(f"exec {args.exec_file}"):
        os.execve(args.exec_file, child.argv, child.exposure.env)


def _read_all(fd: int) -> str:
    """The child's failure message, or "" once its exec closed the pipe."""
    data = b""
    while chunk := os.read(fd, 4096):
        data += chunk
    os.close(fd)
    return data.decode(errors="replace")


def _detach(dev_null: int) -> None:
    """--daemonize: the supervisor leaves the terminal too (its caller may be a session leader: then it stays)."""
    with contextlib.suppress(PermissionError):
        os.setsid()
    for fd in (0, 1, 2):
        os.dup2(dev_null, fd)


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


class _Reaper:
    """The VMM's process as seen by its supervisor: signals passed on, its end awaited exactly once."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.status: int | None = None

    def wait(self) -> int:
        if self.status is None:
            _, status = os.waitpid(self.pid, 0)
            self.status = os.waitstatus_to_exitcode(status)
        code = self.status
        return code if code >= 0 else 128 - code

    def supervise(self) -> int:
        for signum in FORWARDED:
            signal.signal(signum, self._forward)
        try:
            return self.wait()
        finally:
            for signum in FORWARDED:  # the VMM is gone: let nothing interrupt the cleanup
                signal.signal(signum, signal.SIG_IGN if signum in STOPPING else signal.SIG_DFL)

    def _forward(self, signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)

    def kill(self) -> None:
        """On a failure after the fork: end the half-made VMM before its cgroups go."""
        if self.status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.wait()
