"""Control-plane start-up and latency: how soon ``firelet-vmm`` answers, and how fast.

Measures, over many runs (medians, with raw numbers):
- wall time from spawning ``firelet-vmm --api-sock`` to its first answer to ``GET /``;
- the process's CPU time at that moment (``/proc/PID/schedstat``: ns on CPU;
  Firecracker promises 8 CPU ms to a listening API socket);
- the process's own ``api_server.process_startup_time_cpu_us`` metric;
- ``GET /`` round-trip latency on one keep-alive connection, and with a new
  connection per request.

No VM is booted. Run: ``python3 bench/api.py [--runs 20] [--requests 2000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_GET = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
_FLUSH_BODY = b'{"action_type": "FlushMetrics"}'
_FLUSH = (b"PUT /actions HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n" % len(_FLUSH_BODY)) + _FLUSH_BODY


def _cpu_ns(pid: int) -> int:
    """Time the process has spent on a CPU (proc(5), /proc/PID/schedstat field 1), in ns."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def _read_answer(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += sock.recv(4096)
    return head


def _one_start(workdir: Path, env: dict[str, str]) -> tuple[float, float, float]:
    """(wall ms to first answer, CPU ms at that moment, self-reported startup CPU ms)."""
    sock_path = workdir / "api.sock"
    metrics = workdir / "metrics.json"
    for p in (sock_path, metrics):
        p.unlink(missing_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "firelet.cli.vmm", "--api-sock", str(sock_path),
                             "--metrics-path", str(metrics)], env=env, cwd=workdir)
    try:
        while True:
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(str(sock_path))
                s.sendall(_GET)
                _read_answer(s)
                wall_ms = (time.perf_counter() - t0) * 1000
                cpu_ms = _cpu_ns(proc.pid) / 1e6
                break
            except (FileNotFoundError, ConnectionRefusedError, ConnectionError):
                s.close()
                if proc.poll() is not None:
                    raise RuntimeError("firelet-vmm exited before answering") from None
                time.sleep(0.0005)
        s.sendall(_FLUSH)
        _read_answer(s)
        s.close()
        line = json.loads(metrics.read_text().splitlines()[-1])
        self_cpu_ms = line["api_server"]["process_startup_time_cpu_us"] / 1000
    finally:
        proc.terminate()
        proc.wait(10)
    return wall_ms, cpu_ms, self_cpu_ms


def _bare_python_cpu_ms(env: dict[str, str]) -> float:
    """The interpreter's own start-up CPU (site, encodings), the floor under any Python VMM."""
    code = "print(open('/proc/self/schedstat').read().split()[0])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return int(out.stdout) / 1e6


def _latency(sock_path: Path, requests: int) -> tuple[list[float], list[float]]:
    keep: list[float] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(sock_path))
        for _ in range(requests):
            t = time.perf_counter()
            s.sendall(_GET)
            _read_answer(s)
            keep.append((time.perf_counter() - t) * 1e6)
    fresh: list[float] = []
    for _ in range(max(1, requests // 4)):
        t = time.perf_counter()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(sock_path))
            s.sendall(_GET)
            _read_answer(s)
        fresh.append((time.perf_counter() - t) * 1e6)
    return keep, fresh


def _row(name: str, unit: str, values: list[float]) -> str:
    median = statistics.median(values)
    return f"| {name} | {median:.2f} {unit} | {min(values):.2f} | {max(values):.2f} | {len(values)} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="process starts to measure")
    parser.add_argument("--requests", type=int, default=2000, help="GET / round trips to measure")
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with tempfile.TemporaryDirectory(prefix="firelet-bench-") as tmp:
        work = Path(tmp)
        _one_start(work, env)  # warm the page cache and .pyc files; not counted
        starts = [_one_start(work, env) for _ in range(args.runs)]
        bare = [_bare_python_cpu_ms(env) for _ in range(args.runs)]
        sock_path = work / "lat.sock"
        proc = subprocess.Popen([sys.executable, "-m", "firelet.cli.vmm", "--api-sock", str(sock_path)], env=env)
        try:
            while not sock_path.exists():
                time.sleep(0.01)
            time.sleep(0.1)
            keep, fresh = _latency(sock_path, args.requests)
        finally:
            proc.terminate()
            proc.wait(10)
    print(f"firelet-vmm control plane, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}\n")
    print("| measure | median | min | max | n |")
    print("|---|---|---|---|---|")
    print(_row("spawn → first `GET /` answer (wall)", "ms", [w for w, _, _ in starts]))
    print(_row("CPU time at first answer (schedstat)", "ms", [c for _, c, _ in starts]))
    print(_row("self-reported process_startup_time_cpu_us", "ms", [s for _, _, s in starts]))
    print(_row("baseline: bare `python3 -c ...` CPU", "ms", bare))
    print(_row("`GET /` round trip, keep-alive", "µs", keep))
    print(_row("`GET /` round trip, new connection", "µs", fresh))
    print("\nraw wall ms:", " ".join(f"{w:.1f}" for w, _, _ in starts))
    print("raw CPU ms:", " ".join(f"{c:.1f}" for _, c, _ in starts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
