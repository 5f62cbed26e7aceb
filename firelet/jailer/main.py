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

The parent's steps are :mod:`setup`'s and the child's :mod:`confine`'s, which the
warm launcher's jailed launches run too; only the exec and the supervision are here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass

from firelet.errors import FireletError
from firelet.jailer import confine, flags, runtime, setup
from firelet.jailer.confine import StepError, step

PROG = "firelet-jailer"
#: Signals a supervisor passes on to the VMM, so that stopping the jailer stops the VM.
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
STOPPING = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@dataclass
class Child:
    """What the forked process needs to confine itself and exec the VMM."""

    confinement: confine.Confinement
    exec_file: str
    argv: list[str]
    env: dict[str, str]


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
        dev_null = None
        if args.daemonize:
            dev_null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
            cleanup.callback(_close_quietly, dev_null)
        prepared = setup.prepare(args.jail_spec(), exposure, cleanup, dev_null)
        argv = [args.exec_file, f"--id={args.id}", f"--start-time-us={start_us}", "--start-time-cpu-us=0",
                *args.vmm_args]
        child = Child(prepared.confinement, args.exec_file, argv, exposure.env)
        with step("fork"):
            pid, handshake = _spawn(child, args.new_pid_ns)
        cleanup.callback(handshake.close)
        reaped = _Reaper(pid)
        cleanup.callback(reaped.kill)
        setup.place(prepared, pid, cleanup)
        handshake.go()
        failure = handshake.outcome()
        if failure:
            reaped.wait()
            raise StepError(failure)
        if args.daemonize and dev_null is not None:
            _detach(dev_null)
        code = reaped.supervise()
        oom = setup.oom_kills(prepared)
    if oom:
        print(f"{PROG}: error: {setup.oom_message(oom)}", file=sys.stderr)
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


def _spawn(child: Child, new_pid_ns: bool) -> tuple[int, confine.Handshake]:
    """Fork the VMM's process: it waits for ``go`` (once it is in its cgroups), confines itself and execs."""
    handshake = confine.Handshake()
    try:
        pid = confine.fork(new_pid_ns)
    except BaseException:
        handshake.close()
        raise
    if pid == 0:  # pragma: no cover - runs in the child, which never returns
        handshake.confine_child(child.confinement)
        try:
            with step(f"exec {child.exec_file}"):
                os.execve(child.exec_file, child.argv, child.env)
        except StepError as exc:
            handshake.fail(str(exc))
        except BaseException as exc:
            handshake.fail(f"jail: {type(exc).__name__}: {exc}")
    handshake.forked()
    return pid, handshake


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
