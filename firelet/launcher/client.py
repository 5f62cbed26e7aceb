"""``Launcher``: the Python API to a warm launcher (start one, or connect to a running one).

    with Launcher.start("/run/firelet/launcher.sock") as launcher:
        launcher.launch("vm-1", ["--api-sock", "/run/vm-1.sock"])
        print(launcher.list())
        launcher.stop("vm-1")

One connection, one request at a time (the protocol answers in order).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

from firelet.launcher import protocol
from firelet.launcher.socket_path import LauncherError

#: How long :meth:`Launcher.start` waits for a new launcher to answer (s): imports take a while in the rig.
START_TIMEOUT_S = 60.0
#: How long a reply may take beyond what the request itself waits for (s).
_REPLY_MARGIN_S = 30.0
#: What ``list``, ``wait`` and ``reap`` answer: one record per VMM (docs/launcher.md).
Records = list[dict[str, Any]]
Names = list[str]


class Launcher:
    """A connection to a launcher; the launcher's process too, if :meth:`start` made it."""

    def __init__(self, socket_path: str | os.PathLike[str], *, process: subprocess.Popen[bytes] | None = None,
                 timeout_s: float = 5.0) -> None:
        self.socket_path = os.fspath(socket_path)
        self.process = process
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(timeout_s)
            self._sock.connect(self.socket_path)
        except OSError as exc:
            self._sock.close()
            raise LauncherError(f"no launcher answers on {self.socket_path}: {exc.strerror or exc}; start one "
                                "with `firelet launcher --socket PATH`") from None
        self._buf = b""

    @classmethod
    def connect(cls, socket_path: str | os.PathLike[str]) -> Launcher:
        return cls(socket_path)

    @classmethod
    def start(cls, socket_path: str | os.PathLike[str], *, log_path: str | os.PathLike[str] | None = None,
              timeout_s: float = START_TIMEOUT_S) -> Launcher:
        """Run ``firelet launcher --socket PATH`` in its own session; connected once it answers.

        Its stderr goes to ``log_path`` (default: inherited). The launcher outlives this
        object only if :meth:`close` is told to leave it running.
        """
        path = os.fspath(socket_path)
        log = open(log_path, "ab") if log_path is not None else None  # noqa: SIM115  (handed to the child)
        try:
            process = subprocess.Popen([sys.executable, "-m", "firelet", "launcher", "--socket", path],
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        finally:
            if log is not None:
                log.close()
        deadline = time.monotonic() + timeout_s
        while True:
            code = process.poll()
            if code is not None:
                why = f"; see {log_path}" if log_path is not None else ""
                raise LauncherError(f"the launcher for {path} exited at start (status {code}){why}")
            if Path(path).exists():
                try:
                    launcher = cls(path, process=process)
                except LauncherError:
                    pass
                else:  # ours, not a launcher that already listened there (ours then exits saying so)
                    if launcher.ping()["pid"] == process.pid:
                        return launcher
                    launcher.process = None
                    launcher.close()
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise LauncherError(f"the launcher for {path} did not answer within {timeout_s:g} s")
            time.sleep(0.02)

    # -- requests ---------------------------------------------------------------------------
    def request(self, message: dict[str, Any], *, wait_s: float = 0.0) -> dict[str, Any]:
        """Send one request, return its reply; a refusal raises :class:`LauncherError` with its line."""
        self._sock.settimeout(wait_s + _REPLY_MARGIN_S)
        try:
            self._sock.sendall(protocol.encode(message))
            while b"\n" not in self._buf:
                chunk = self._sock.recv(65536)
                if not chunk:
                    raise LauncherError(f"the launcher on {self.socket_path} closed the connection")
                self._buf += chunk
        except OSError as exc:
            raise LauncherError(f"talking to the launcher on {self.socket_path}: {exc.strerror or exc}") from None
        line, _, self._buf = self._buf.partition(b"\n")
        reply: dict[str, Any] = msgspec.json.decode(line)
        if not reply.get("ok"):
            raise LauncherError(str(reply.get("error", "refused")))
        return reply

    def launch(self, vm_id: str, argv: list[str], *, stdout: str = protocol.INHERIT,
               stderr: str = protocol.INHERIT, name: str = "firelet-vmm", cwd: str | None = None,
               jail: dict[str, Any] | None = None) -> int:
        """Fork a VMM running ``firelet-vmm argv``; its pid.

        ``jail`` confines it as firelet-jailer would, e.g. ``{"uid": 1000, "gid": 1000,
        "chroot_base_dir": "/srv/jailer", "cgroup_version": 2, "cgroups": {"memory.max": "256M"}}``: its paths
        in ``argv`` (``--api-sock``, ...) are then inside ``<base>/firelet-vmm/<id>/root``.
        """
        message: dict[str, Any] = {"op": "launch", "id": vm_id, "argv": argv, "stdout": stdout, "stderr": stderr,
                                   "name": name, "cwd": cwd}
        if jail is not None:
            message["jail"] = jail
        return int(self.request(message)["pid"])

    def list(self) -> Records:
        return list(self.request({"op": "list"})["vms"])

    def stop(self, vm_id: str | None = None, *, signal: str = "SIGTERM", grace_s: float = 5.0) -> Names:
        """Signal one VMM (or, with no id, all); a SIGTERM becomes a SIGKILL after ``grace_s``. Ids signalled."""
        message = {"op": "stop", "id": vm_id, "all": vm_id is None, "signal": signal, "grace_s": grace_s}
        return list(self.request(message)["stopping"])

    def wait(self, vm_id: str | None = None, *, timeout_s: float = 30.0) -> Records:
        """Block until that VMM (or every one) has ended; their records."""
        return list(self.request({"op": "wait", "id": vm_id, "timeout_s": timeout_s}, wait_s=timeout_s)["vms"])

    def reap(self) -> Records:
        return list(self.request({"op": "reap"})["vms"])

    def ping(self) -> dict[str, Any]:
        return self.request({"op": "ping"})

    def shutdown(self, *, leave_running: bool = False, grace_s: float = 5.0) -> dict[str, Any]:
        """Stop the launcher (and its VMMs, unless ``leave_running``); waits for our own process to end."""
        reply = self.request({"op": "shutdown", "leave_running": leave_running, "grace_s": grace_s})
        self._close_socket()
        if self.process is not None:
            self.process.wait(timeout=grace_s + _REPLY_MARGIN_S)
        return reply

    def close(self, *, leave_running: bool = False) -> None:
        """Disconnect; a launcher this object started is shut down (its VMMs too, unless ``leave_running``)."""
        if self.process is not None and self.process.poll() is None and self._sock.fileno() >= 0:
            try:
                self.shutdown(leave_running=leave_running)
            except LauncherError:
                self.process.terminate()
                self.process.wait()
        self._close_socket()

    def _close_socket(self) -> None:
        self._sock.close()

    def __enter__(self) -> Launcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
