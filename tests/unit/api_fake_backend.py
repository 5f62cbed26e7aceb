"""A test double for the API's state rules: records calls, answers like a VMM would.

Not a pretend VM: it keeps just enough state (run state, balloon target) for
the API's rules to be observable, and runs submitted calls on its own thread,
as the real VMM's event loop does.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from firelet.config.model import Balloon, VmConfig
from firelet.controller.interface import BackendError, NotSupported

T = TypeVar("T")


class FakeBackend:
    def __init__(self, *, fail_start: str | None = None, snapshots: bool = False) -> None:
        self._state = "Not started"
        self._loop = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fake_loop")
        self.loop_threads: set[str] = set()
        self.calls: list[tuple[Any, ...]] = []
        self.config: VmConfig | None = None
        self.balloon: Balloon | None = None
        self.fail_start = fail_start
        self.snapshots = snapshots
        self._ended = threading.Event()

    @property
    def state(self) -> str:
        return self._state

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        def run() -> T:
            self.loop_threads.add(threading.current_thread().name)
            return fn()
        return self._loop.submit(run)

    def _running(self) -> None:
        if self._state == "Not started":
            raise BackendError("the microVM has not been started")

    def start(self, config: VmConfig) -> None:
        if self.fail_start:
            raise BackendError(self.fail_start)
        self.calls.append(("start",))
        self.config = config
        self.balloon = config.balloon
        self._state = "Running"

    def pause(self) -> None:
        self._running()
        self.calls.append(("pause",))
        self._state = "Paused"

    def resume(self) -> None:
        self._running()
        self.calls.append(("resume",))
        self._state = "Running"

    def send_ctrl_alt_del(self) -> None:
        self._running()
        self.calls.append(("ctrl_alt_del",))
        self._ended.set()

    def update_drive(self, drive_id: str, path_on_host: str) -> None:
        if path_on_host.startswith("/nonexistent"):
            raise BackendError(f"drive {drive_id}: cannot open {path_on_host}: No such file or directory")
        self.calls.append(("update_drive", drive_id, path_on_host))

    def update_drive_rate_limiter(self, drive_id: str, rate_limiter: Any) -> None:
        self.calls.append(("update_drive_rate_limiter", drive_id, rate_limiter))

    def update_net_rate_limiters(self, iface_id: str, rx: Any, tx: Any) -> None:
        self.calls.append(("update_net", iface_id, rx, tx))

    def balloon_config(self) -> Balloon:
        assert self.balloon is not None
        return self.balloon

    def update_balloon(self, amount_mib: int) -> None:
        assert self.balloon is not None
        self.calls.append(("update_balloon", amount_mib))

    def balloon_stats(self) -> dict[str, int]:
        assert self.balloon is not None
        mib = self.balloon.amount_mib
        return {"target_pages": mib * 256, "actual_pages": 0, "target_mib": mib, "actual_mib": 0}

    def update_balloon_stats_interval(self, stats_polling_interval_s: int) -> None:
        self.calls.append(("update_balloon_stats", stats_polling_interval_s))

    def create_snapshot(self, params: Any) -> None:
        if not self.snapshots:
            raise NotSupported("snapshots are not supported yet")
        self.calls.append(("create_snapshot", params.snapshot_path))

    def load_snapshot(self, params: Any) -> None:
        if not self.snapshots:
            raise NotSupported("snapshots are not supported yet")
        self.calls.append(("load_snapshot", params.snapshot_path))
        self._state = "Paused" if not params.resume_vm else "Running"

    def flush_metrics(self) -> None:
        self.calls.append(("flush_metrics",))

    def wait(self, timeout: float | None = None) -> int | None:
        return 0 if self._ended.wait(timeout) else None


# -- A live server on a real Unix socket, and a tiny client for tests ----------------
import json  # noqa: E402
import socket  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

from firelet.api.routes import Api  # noqa: E402
from firelet.api.server import ApiServer, bind_unix_socket  # noqa: E402


@contextmanager
def serve(api: Api, sock_path: Path, **kwargs: Any) -> Iterator[ApiServer]:
    server = ApiServer(bind_unix_socket(str(sock_path)), api.handle, **kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def raw_exchange(sock_path: Path, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send bytes, read until the server closes (or the timeout)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock_path))
        s.sendall(data)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


def request_bytes(method: str, path: str, body: Any = None, *, close: bool = True) -> bytes:
    payload = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(payload)}\r\n"
    if close:
        head += "Connection: close\r\n"
    return head.encode() + b"\r\n" + payload


def parse_response(data: bytes) -> tuple[int, Any]:
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, (json.loads(body) if body else None)


def call(sock_path: Path, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    return parse_response(raw_exchange(sock_path, request_bytes(method, path, body)))


def wait_for_api(path: Path, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Wait until a firelet-vmm process answers ``GET /`` on ``path``; fail if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"firelet-vmm exited early: {proc.stderr.read() if proc.stderr else ''!r}")
        if path.exists():
            try:
                call(path, "GET", "/")
                return
            except OSError:
                pass
        time.sleep(0.02)
    raise AssertionError("API socket never answered")
