"""The jailer's cost: from start to the API socket answering, jailed beside unjailed.

Each run spawns the process and polls its API socket with ``GET /`` until the first
answer; the wall time from spawn to that answer is one sample. Three ways:
- ``firelet-vmm`` alone (the venv's console script), socket in a temporary directory;
- ``firelet-jailer --exec-file firelet-vmm`` with no namespaces beyond the mount one;
- the same with ``--new-pid-ns`` and a cgroup (``pids.max``) as a production jail would.
Medians, min/max and the raw numbers (ms); ratios against the unjailed median. No VM
is booted. Needs root. Run: ``sudo python3 bench/jailer.py [--runs 20]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from firelet.launcher.probe import instance_state  # noqa: E402  (after the path: run from a checkout)

UID = GID = 4242


def _time_to_answer(argv: list[str], sock_path: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL)
    try:
        while instance_state(sock_path) is None:  # GET / answered
            if proc.poll() is not None:
                raise RuntimeError(f"{argv[0]} ended ({proc.returncode}) before its API answered")
            time.sleep(0.0005)
        return (time.perf_counter() - t0) * 1000
    finally:
        proc.terminate()
        proc.wait(30)


def _v2_controllers() -> list[str]:
    try:
        return Path("/sys/fs/cgroup/cgroup.controllers").read_text().split()
    except OSError:
        return []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="starts to measure per way")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/jailer.py: the jailer needs root", file=sys.stderr)
        return 2
    vmm = Path(sys.executable).parent / "firelet-vmm"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    jailer = [sys.executable, "-m", "firelet.jailer"]
    version = "2" if "pids" in _v2_controllers() else "1"  # the rig: cgroup2 only; this host: pids in v1
    with tempfile.TemporaryDirectory(prefix="fj", dir="/tmp") as tmp:
        base = Path(tmp)
        plain_sock = base / "api.sock"
        ways = {
            "firelet-vmm, unjailed": ([str(vmm), "--api-sock", str(plain_sock)], plain_sock),
            "firelet-jailer (mount ns, uid, rlimits)": (
                [*jailer, "--id", "bench-a", "--exec-file", str(vmm), "--uid", str(UID), "--gid", str(GID),
                 "--chroot-base-dir", str(base), "--", "--api-sock", "/run/api.sock"],
                base / "firelet-vmm" / "bench-a" / "root" / "run" / "api.sock"),
            "firelet-jailer --new-pid-ns --cgroup pids.max": (
                [*jailer, "--id", "bench-b", "--exec-file", str(vmm), "--uid", str(UID), "--gid", str(GID),
                 "--chroot-base-dir", str(base), "--new-pid-ns", "--parent-cgroup", f"bench-{uuid.uuid4().hex[:6]}",
                 "--cgroup-version", version, "--cgroup", "pids.max=64", "--", "--api-sock", "/run/api.sock"],
                base / "firelet-vmm" / "bench-b" / "root" / "run" / "api.sock"),
        }
        samples: dict[str, list[float]] = {}
        for name, (argv, sock_path) in ways.items():
            _time_to_answer(argv, sock_path, env)  # warm caches; not counted
            samples[name] = []
        for _ in range(args.runs):  # interleaved, so that load on the machine hits every way alike
            for name, (argv, sock_path) in ways.items():
                samples[name].append(_time_to_answer(argv, sock_path, env))
    base_median = statistics.median(samples["firelet-vmm, unjailed"])
    print(f"Start to first API answer, {args.runs} runs each (ms)\n")
    print("| way | median | min | max | ratio to unjailed |")
    print("|---|---|---|---|---|")
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.1f} | {min(values):.1f} | {max(values):.1f} | {median / base_median:.2f} |")
    print("\nraw:")
    for name, values in samples.items():
        print(f"  {name}: {', '.join(f'{v:.1f}' for v in values)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
