"""Launch to the API answering, and memory per VMM: warm (forked by the launcher) vs cold (exec).

On the host, no VM booted (issue #15):
- wall time from the launch request (warm) or the spawn (cold) to the first answer to
  ``GET /`` on the new VMM's API socket, and the child's CPU time at that moment
  (``/proc/PID/schedstat``: ns on a CPU; Firecracker promises 8 CPU ms);
- with 10 and 50 API-only VMMs alive at once: each one's USS (``/proc/PID/smaps_rollup``
  Private_Clean + Private_Dirty) and RSS, the launcher's own USS, and how long the
  whole batch took to answer (VMMs per second).

Medians with [min-max] and raw numbers. Run: ``python3 bench/launch.py [--runs 20] [--counts 10,50]``.

``--rate 1,10,50,200`` measures instead the launch rate to a tiny guest's first port write,
N VMs at once (see ``bench/launchrate.py``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from firelet.launcher import procinfo  # noqa: E402  (after the path: run from a checkout)
from firelet.launcher.client import Launcher  # noqa: E402
from firelet.launcher.probe import instance_state  # noqa: E402

import launchrate  # noqa: E402  (bench/, the script's own folder)
from rigrun import machine_description  # noqa: E402


def _answers(path: Path) -> bool:
    """The VMM's API answers ``GET /``."""
    return instance_state(path) is not None


def _cpu_ms(pid: int) -> float:
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0]) / 1e6


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _cold(sock: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "firelet.cli.vmm", "--api-sock", str(sock)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def one_start(launcher: Launcher, work: Path, warm: bool, n: int) -> tuple[float, float]:
    """(wall ms to the first answer, the child's CPU ms then)."""
    sock = work / f"s{n}.sock"
    t0 = time.perf_counter()
    if warm:
        pid = launcher.launch(f"w{n}", ["--api-sock", str(sock)], stdout="null", stderr="null")
        proc = None
    else:
        proc = _cold(sock)
        pid = proc.pid
    while not _answers(sock):
        time.sleep(0.0002)
    wall_ms, cpu_ms = (time.perf_counter() - t0) * 1000, _cpu_ms(pid)
    if proc is None:
        launcher.stop(f"w{n}")
        launcher.wait(f"w{n}")
        launcher.reap()
    else:
        proc.terminate()
        proc.wait(10)
    return wall_ms, cpu_ms


def batch(launcher: Launcher, work: Path, warm: bool, count: int) -> tuple[list[int], list[int], float]:
    """``count`` VMMs at once: (USS KiB each, RSS KiB each, VMMs per second to all answering)."""
    socks = [work / f"b{i}.sock" for i in range(count)]
    t0 = time.perf_counter()
    procs: list[subprocess.Popen[bytes]] = []
    pids = []
    for i, sock in enumerate(socks):
        if warm:
            pids.append(launcher.launch(f"b{i}", ["--api-sock", str(sock)], stdout="null", stderr="null"))
        else:
            procs.append(_cold(sock))
            pids.append(procs[-1].pid)
    for sock in socks:
        while not _answers(sock):
            time.sleep(0.001)
    rate = count / (time.perf_counter() - t0)
    time.sleep(0.5)  # let each settle (its API thread idle) before reading its memory
    memory = [procinfo.memory_kib(pid) for pid in pids]
    if warm:
        launcher.stop()
        launcher.wait(timeout_s=120)
        launcher.reap()
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(30)
    return [uss for _, uss in memory], [rss for rss, _ in memory], rate


def _stats(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} [{min(values):.1f}-{max(values):.1f}]"


def _rate_section(launcher: Launcher, work: Path, counts: list[int], cold_max: int) -> None:
    """Issue #15's launch rate to a tiny guest's port write (the API/memory section is skipped)."""
    config = launchrate.write_guest(work)
    load_before = os.getloadavg()[0]
    launchrate.warm_batch(launcher, config, 1, work)  # not counted: page cache, .pyc files
    launchrate.cold_batch(config, 1, work)
    results = launchrate.measure(launcher, config, work, counts, cold_max)
    split = launchrate.reset_split(launcher, config, work, runs=10)
    print(f"{machine_description()}; load average before {load_before:.2f}, after "
          f"{os.getloadavg()[0]:.2f}; `{' '.join(sys.argv)}`")
    print(launchrate.report(results, cold_max))
    print(launchrate.report_split(split))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="starts to measure, each way")
    parser.add_argument("--counts", default="10,50", help="VMMs alive at once for the memory figures")
    parser.add_argument("--rate", default=None, metavar="COUNTS",
                        help="instead: VMs per second to a tiny guest's port write, N at once (e.g. 1,10,50,200)")
    parser.add_argument("--rate-cold-max", type=int, default=50, metavar="N",
                        help="with --rate: start at most N cold VMMs at once (larger counts run warm only; "
                             "200 cold take ~70 CPU-s, both cores of this box for over half a minute)")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    with tempfile.TemporaryDirectory(prefix="fl-bench-", dir="/tmp") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        launcher = Launcher.start(work / "launcher.sock", log_path=work / "launcher.log")
        launcher_start_ms = (time.perf_counter() - t0) * 1000
        assert launcher.process is not None
        try:
            if args.rate:
                _rate_section(launcher, work, [int(c) for c in args.rate.split(",")], args.rate_cold_max)
                return 0
            for warm in (True, False):  # not counted: page cache, .pyc files
                one_start(launcher, work, warm, 999)
            starts = {warm: [one_start(launcher, work, warm, n) for n in range(args.runs)] for warm in (True, False)}
            mem = {(warm, count): batch(launcher, work, warm, count) for count in counts for warm in (True, False)}
            launcher_uss = procinfo.memory_kib(launcher.process.pid)[1] / 1024
        finally:
            launcher.close()
    print(f"launch to API answering, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; "
          f"medians [min-max]; launcher start (imports, warm-up) {launcher_start_ms:.0f} ms, its USS "
          f"{launcher_uss:.1f} MiB\n")
    print("| measure | warm (launcher fork) | cold (exec) | warm/cold |")
    print("|---|---|---|---|")
    for label, index in (("launch → `GET /` answers, wall ms", 0), ("child CPU at that moment, ms", 1)):
        w, c = [s[index] for s in starts[True]], [s[index] for s in starts[False]]
        print(f"| {label} (n={args.runs}) | {_stats(w)} | {_stats(c)} | "
              f"{statistics.median(w) / statistics.median(c):.2f}x |")
    for count in counts:
        (wu, wr, wrate), (cu, cr, crate) = mem[(True, count)], mem[(False, count)]
        print(f"| USS per VMM, {count} alive, MiB | {_stats([u / 1024 for u in wu])} | "
              f"{_stats([u / 1024 for u in cu])} | {statistics.median(wu) / statistics.median(cu):.2f}x |")
        print(f"| RSS per VMM, {count} alive, MiB | {_stats([r / 1024 for r in wr])} | "
              f"{_stats([r / 1024 for r in cr])} | {statistics.median(wr) / statistics.median(cr):.2f}x |")
        print(f"| {count} launched at once → all answer, VMMs/s | {wrate:.1f} | {crate:.1f} | "
              f"{wrate / crate:.2f}x |")
    for warm in (True, False):
        name = "warm" if warm else "cold"
        print(f"\nraw {name} wall ms:", " ".join(f"{w:.1f}" for w, _ in starts[warm]))
        print(f"raw {name} CPU ms:", " ".join(f"{c:.1f}" for _, c in starts[warm]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
