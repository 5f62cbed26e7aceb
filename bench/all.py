"""Every benchmark in one command, one after another, each beside its yardstick (QEMU microvm).

    python3 bench/all.py [--out DIR] [--only boot,fleet] [--quick]

Each benchmark runs as its own script (those that boot Linux start their own nested rig
on a host whose KVM cannot run it), its report printed as it comes and kept in
``DIR/<name>.txt`` (and ``DIR/<name>.json`` where the script writes one); a summary of
what ran, how long it took and what failed ends the run. ``--quick`` runs a small
version of each (fewer runs, smaller transfers and fleets): a check that they work, not
figures to publish. The figures in the README come from a full run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Bench:
    name: str
    what: str
    full: tuple[str, ...]
    quick: tuple[str, ...]
    json: bool = True  # the script takes --json OUT


BENCHES = (
    Bench("boot", "boot to the guest's command, firelet vs QEMU (rig)", ("boot.py", "--runs", "5"),
          ("boot.py", "--runs", "1")),
    Bench("first-entry", "process start to the guest's first instruction (rig)", ("first_entry.py", "--runs", "5"),
          ("first_entry.py", "--runs", "1"), json=False),
    Bench("launch", "warm and cold launches to the API, and memory per VMM (host)",
          ("launch.py", "--runs", "20", "--counts", "10,50,200"),
          ("launch.py", "--runs", "3", "--counts", "10"), json=False),
    Bench("launch-rate", "microVMs per second to a tiny guest's reset (host)",
          ("launch.py", "--rate", "1,10,50,200"), ("launch.py", "--rate", "1,10"), json=False),
    Bench("api", "API request latency (host)", ("api.py",), ("api.py", "--runs", "3", "--requests", "200"),
          json=False),
    Bench("disk", "sequential and random disk I/O (rig)", ("disk.py", "--runs", "3"),
          ("disk.py", "--runs", "1", "--mib", "8")),
    Bench("net", "TCP both ways, QEMU vhost=off and vhost=on (rig)", ("net.py", "--runs", "3"),
          ("net.py", "--runs", "1", "--mib", "1")),
    Bench("fleet", "many microVMs at once: warm, cold, QEMU (rig)",
          ("fleet.py", "--count", "10", "--plot", str(HERE.parent / "docs" / "fleet.png")),
          ("fleet.py", "--count", "2")),
)


def _parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/all.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("bench-results"), metavar="DIR",
                   help="where each report goes (default ./bench-results)")
    p.add_argument("--only", metavar="NAMES", help=f"a comma-separated subset of: {', '.join(b.name for b in BENCHES)}")
    p.add_argument("--quick", action="store_true", help="a small version of each: a check, not figures")
    args = p.parse_args(argv)
    known = {b.name for b in BENCHES}
    if args.only:
        unknown = sorted(set(args.only.split(",")) - known)
        if unknown:
            p.error(f"--only: no benchmark named {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return args


def command(bench: Bench, quick: bool, out: Path) -> list[str]:
    script, *rest = bench.quick if quick else bench.full
    argv = [sys.executable, str(HERE / script), *rest]
    if bench.json:
        argv += ["--json", str(out / f"{bench.name}.json")]
    return argv


def run_one(argv: list[str], report: Path) -> int:
    """Run one benchmark, its output shown as it comes and kept in ``report``."""
    with report.open("wb") as keep, subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
            keep.write(line)
    return proc.returncode


def main(argv: list[str]) -> int:
    args = _parse_args(argv)
    chosen = [b for b in BENCHES if not args.only or b.name in args.only.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    summary: list[tuple[str, int, float]] = []
    for index, bench in enumerate(chosen, 1):
        print(f"\n=== [{index}/{len(chosen)}] {bench.name}: {bench.what}", flush=True)
        t0 = time.monotonic()
        code = run_one(command(bench, args.quick, args.out), args.out / f"{bench.name}.txt")
        summary.append((bench.name, code, time.monotonic() - t0))
    print(f"\n=== summary ({'quick: not figures to publish' if args.quick else 'full'}; reports in {args.out})")
    for name, code, seconds in summary:
        print(f"{name:12} {'ok' if code == 0 else f'FAILED (exit {code})':16} {seconds / 60:6.1f} min")
    return 0 if all(code == 0 for _, code, _ in summary) else 1


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
