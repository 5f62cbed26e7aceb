"""What the tests of the launcher and the fleet share: a short working directory, and waiting
for a process that is not the test's child to end."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from firelet.launcher.client import Launcher


def short_workdir() -> Iterator[Path]:
    """For a fixture: a fresh directory under /tmp, removed afterwards. Short, as Unix socket
    paths hold at most 107 bytes (pytest's tmp_path is often longer)."""
    path = Path(tempfile.mkdtemp(prefix="fl-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def ended(pid: int, timeout: float = 30.0) -> bool:
    """The process is gone, or a zombie its new parent has yet to reap (proc(5): state Z)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.02)
    return False


def running_launcher(workdir: Path) -> Iterator[Launcher]:
    """For a fixture: a real launcher process on ``workdir/launcher.sock`` (log beside it), closed afterwards."""
    started = Launcher.start(workdir / "launcher.sock", log_path=workdir / "launcher.log")
    try:
        yield started
    finally:
        if started.process is not None and started.process.poll() is None:
            started.close()
