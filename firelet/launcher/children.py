"""The launcher's bookkeeping of its children: who runs, who ended and how, who is due a SIGKILL.

Children are reaped with ``wait4(-1, WNOHANG)`` from the launcher's own loop after
a SIGCHLD wakes it (and on every turn of the loop, so a lost wakeup costs nothing):
the exit status and the CPU time come from the kernel, the rest from /proc.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from firelet.launcher import procinfo

if TYPE_CHECKING:  # pragma: no cover
    from firelet.launcher.jail import Jailed

#: How much of an ended child's stderr file is read for its last line.
_TAIL_BYTES = 4096


@dataclass
class Child:
    id: str
    pid: int
    argv: list[str]
    stderr_path: str | None
    started: float = field(default_factory=time.monotonic)
    status: int | None = None  # waitpid(2) status once reaped
    cpu_s: float = 0.0  # from wait4's rusage once reaped
    ended: float | None = None
    kill_at: float | None = None  # SIGKILL then, if it still runs
    jail: Jailed | None = None  # a jailed launch's jail, released once reaped
    jail_end: dict[str, object] = field(default_factory=dict)  # what releasing it found (OOM kills)

    @property
    def running(self) -> bool:
        return self.status is None

    def record(self) -> dict[str, object]:
        """What ``list``, ``wait`` and ``reap`` say about this child."""
        info: dict[str, object] = {"id": self.id, "pid": self.pid, "argv": self.argv}
        if self.jail is not None:
            info.update(self.jail.record())
        if self.status is None:
            cpu_s, uptime_s = procinfo.stat_times(self.pid)
            rss, uss = procinfo.memory_kib(self.pid)
            info.update(state="running", uptime_s=round(uptime_s, 3), cpu_s=round(cpu_s, 3), rss_kib=rss,
                        uss_kib=uss, exit_code=None, exit_signal=None)
            return info
        ended = self.ended if self.ended is not None else time.monotonic()
        info.update(uptime_s=round(ended - self.started, 3), cpu_s=round(self.cpu_s, 3), rss_kib=0, uss_kib=0)
        if os.WIFSIGNALED(self.status):
            info.update(state="killed", exit_code=None, exit_signal=signal.Signals(os.WTERMSIG(self.status)).name)
        else:
            info.update(state="exited", exit_code=os.WEXITSTATUS(self.status), exit_signal=None)
            if os.WEXITSTATUS(self.status) != 0 and self.stderr_path:
                info["error"] = last_line(self.stderr_path)
        info.update(self.jail_end)  # an OOM kill's error says more than a last line
        return info


def last_line(path: str) -> str | None:
    """The last non-empty line of a (log) file: firelet-vmm's one-line error, when it failed."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - _TAIL_BYTES))
            lines = [line for line in f.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return None
    return lines[-1] if lines else None


class Children:
    """Every child not yet reaped by a client (``reap``), by id and by pid."""

    def __init__(self) -> None:
        self._by_id: dict[str, Child] = {}
        self._by_pid: dict[int, Child] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def add(self, child: Child) -> None:
        old = self._by_id.pop(child.id, None)  # an ended child of the same id gives way
        if old is not None:
            self._by_pid.pop(old.pid, None)
        self._by_id[child.id] = child
        self._by_pid[child.pid] = child

    def get(self, vm_id: str) -> Child | None:
        return self._by_id.get(vm_id)

    def all(self) -> list[Child]:
        return list(self._by_id.values())

    def running(self) -> list[Child]:
        return [c for c in self._by_id.values() if c.running]

    def forget_ended(self) -> list[Child]:
        ended = [c for c in self._by_id.values() if not c.running]
        for child in ended:
            del self._by_id[child.id]
            self._by_pid.pop(child.pid, None)
        return ended

    def forget_all(self) -> None:
        self._by_id.clear()
        self._by_pid.clear()

    def reap(self) -> list[Child]:
        """Collect every child that has ended (never blocks); those that were ours."""
        ended: list[Child] = []
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:  # no children at all
                break
            if pid == 0:
                break
            child = self._by_pid.get(pid)
            if child is None:  # a child we forgot (left running by a past shutdown cannot be ours)
                continue
            child.status, child.ended, child.kill_at = status, time.monotonic(), None
            child.cpu_s = usage.ru_utime + usage.ru_stime
            ended.append(child)
        return ended

    def signal(self, child: Child, signum: int, grace_s: float) -> bool:
        """Send ``signum``; after a SIGTERM, SIGKILL follows in ``grace_s`` unless it ends. False if it had ended."""
        if not child.running:
            return False
        try:
            os.kill(child.pid, signum)  # still unreaped, so the pid cannot belong to anyone else
        except ProcessLookupError:
            return False
        if signum == signal.SIGTERM:
            child.kill_at = time.monotonic() + grace_s
        return True

    def kill_overdue(self, now: float) -> None:
        for child in self.running():
            if child.kill_at is not None and child.kill_at <= now:
                child.kill_at = None
                try:
                    os.kill(child.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def next_kill(self) -> float | None:
        times = [c.kill_at for c in self.running() if c.kill_at is not None]
        return min(times) if times else None
