"""The frame every guest-booting benchmark shares (bench/boot.py, bench/disk.py).

Such a benchmark measures where KVM boots stock Linux. Where the local /dev/kvm
cannot (firelet.devtools.nested.detect; ``FIRELET_KVM=direct|nested`` overrides
the choice), :func:`rerun_in_rig` builds the guest images here, where the cache is
writable (the rig sees it read-only), and runs the same script with the same
options inside the nested rig, handing it the images and the real machine's
description. Its report starts with :func:`where`: the machine, and the rig if any.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from firelet.errors import FireletError

from launchers import LAUNCHERS, Launcher

BASE_CMDLINE = "console=ttyS0 reboot=k panic=-1 root=/dev/vda rw"
_HOST_ENV = "FIRELET_BENCH_HOST"  # the real machine's description, handed into the rig
_RIG_ENV = "FIRELET_BENCH_RIG"
_REPO = Path(__file__).resolve().parent.parent


def add_options(p: argparse.ArgumentParser, *, runs: int, boot_timeout: float) -> None:
    """The options every such benchmark takes, with its own defaults for the boots."""
    p.add_argument("--runs", type=int, default=runs, help=f"boots per VMM (default {runs})")
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the results as JSON")
    p.add_argument("--boot-timeout", type=float, default=boot_timeout, metavar="S",
                   help=f"per boot (default {boot_timeout:g})")
    p.add_argument("--rig-mem", type=int, default=4096, metavar="MiB", help="outer rig memory")
    p.add_argument("--rig-smp", type=int, default=2, metavar="N", help="outer rig CPUs")
    # Given by rerun_in_rig to the run inside: the images it built outside.
    p.add_argument("--vmlinux", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--rootfs", type=Path, default=None, help=argparse.SUPPRESS)


def machine_description() -> str:
    """Cores, RAM and kernel of the machine this runs on."""
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    return (f"{os.cpu_count()} cores, {mem_kib / 2**20:.1f} GiB RAM, "
            f"Linux {platform.release()}, Python {platform.python_version()}")


def kvm_here() -> tuple[bool, str]:
    """(whether the local /dev/kvm boots stock Linux, why or why not)."""
    from firelet.devtools.nested.detect import local_kvm_runs_stock_guests

    return local_kvm_runs_stock_guests()


def rerun_in_rig(script: str, argv: list[str], args: argparse.Namespace, why: str, *, boots: int,
                 extra: tuple[str, ...] = ()) -> int:
    """Build the images here, then run ``script`` with ``argv`` inside the rig; its exit status.

    ``why`` is what kvm_here said; ``boots`` bounds the rig's time (each at most
    ``--boot-timeout``); ``extra`` are further hidden options for the run inside (what
    else the script built out here).
    """
    from firelet.devtools.images import build_kernel, build_rootfs
    from firelet.devtools.nested import run_in_rig

    print(f"bench: {why}; running inside the nested rig", file=sys.stderr, flush=True)
    kernel, rootfs = build_kernel(), build_rootfs()
    os.environ[_HOST_ENV] = machine_description()
    os.environ[_RIG_ENV] = (f"nested: outer QEMU TCG (-cpu EPYC,+svm,+npt), smp {args.rig_smp}, "
                            f"{args.rig_mem} MiB, kvm-amd inside")
    argv = [a for a in argv if a != "--json" and a != str(args.json)]
    shares = []
    if args.json is not None:  # the rig's /tmp is its own: share the folder the report goes to
        folder = args.json.resolve().parent
        if folder in (Path("/tmp"), Path("/run"), Path("/dev/shm")):  # shared over 9p, it would hide the rig's own
            print(f"bench: error: --json {args.json}: put the report in a folder of its own, not directly in "
                  f"{folder} (the rig would share {folder} itself, where its VMMs make their sockets)",
                  file=sys.stderr)
            return 2
        args.json.parent.mkdir(parents=True, exist_ok=True)
        shares.append(args.json.resolve().parent)
        argv = [*argv, "--json", str(args.json.resolve())]
    inner = [sys.executable, str(Path(script).resolve()), *argv,
             "--vmlinux", str(kernel.vmlinux), "--rootfs", str(rootfs), *extra]
    return run_in_rig(inner, timeout=600 + boots * args.boot_timeout, shares=shares,
                      mem_mib=args.rig_mem, smp=args.rig_smp, cwd=_REPO)


def guest_images(args: argparse.Namespace) -> tuple[Path, Path]:
    """(vmlinux, root image): those handed in from outside the rig, else built (or cached) here."""
    if args.vmlinux is not None and args.rootfs is not None:
        return args.vmlinux, args.rootfs
    from firelet.devtools.images import build_kernel, build_rootfs

    return build_kernel().vmlinux, build_rootfs()


def where(why: str) -> dict[str, str]:
    """The report's ``machine`` and ``rig``; ``why`` is what kvm_here said."""
    in_rig = os.environ.get("FIRELET_IN_RIG") == "1"
    return {"machine": os.environ.get(_HOST_ENV) or machine_description(),
            "rig": (os.environ.get(_RIG_ENV) or "nested") if in_rig else f"none ({why})"}


def stats(values: list[float]) -> dict[str, float] | None:
    """Median, min and max; None when no run gave a value."""
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


#: One boot: (the VMM, a private temporary folder, a fresh copy of the root image in it) ->
#: its figures, or "error" and "console_tail".
OneRun = Callable[[Launcher, Path, Path], dict[str, Any]]


def measure_each(runs: int, rootfs_template: Path, one_run: OneRun, figures: tuple[str, ...],
                 launchers: list[Launcher] | None = None) -> dict[str, Any]:
    """Each VMM of ``launchers`` (default LAUNCHERS) ``runs`` times: per VMM its ``runs`` and the
    :func:`stats` of each of ``figures`` over the runs without an error, or why it is ``unavailable`` here."""
    from firelet.devtools.images import copy_rootfs

    results: dict[str, Any] = {}
    for launcher in LAUNCHERS if launchers is None else launchers:
        why_not = launcher.available()
        if why_not:
            results[launcher.name] = {"unavailable": why_not}
            continue
        done = []
        for i in range(runs):
            with tempfile.TemporaryDirectory(prefix="firelet-bench-") as tmp:
                rootfs = copy_rootfs(Path(tmp) / "root.ext4", source=rootfs_template)
                one = one_run(launcher, Path(tmp), rootfs)
            print(f"# {launcher.name} run {i + 1}/{runs}: "
                  + ", ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in one.items()),
                  file=sys.stderr, flush=True)
            done.append(one)
        good = [r for r in done if "error" not in r]
        results[launcher.name] = {"runs": done, **{key: stats([float(r[key]) for r in good]) for key in figures}}
    return results


def render(report: dict[str, Any], caption: str, headings: list[str],
           cells: Callable[[dict[str, Any], dict[str, Any]], list[str]]) -> str:
    """The report as text: where it ran, the guest, then a markdown table with a row per VMM
    (``cells`` of its results and the reference VMM's, the first of LAUNCHERS) and one per failed run."""
    results: dict[str, dict[str, Any]] = report["results"]
    ref = results.get(LAUNCHERS[0].name, {})
    width = len(headings) + 1

    def row(*values: str) -> str:
        return "| " + " | ".join(values) + " |" + " |" * (width - len(values))

    lines = [f"Machine: {report['machine']}", f"Rig: {report['rig']}", f"Guest: {report['guest']}; {caption}", "",
             row("VMM", *headings), "|" + "---|" * width]
    for name, r in results.items():
        if "unavailable" in r:
            lines.append(row(name, f"unavailable: {r['unavailable']}"))
            continue
        lines.append(row(name, *cells(r, ref)))
        for run in r["runs"]:
            if "error" in run:
                lines.append(row(f" ↳ failed: {run['error']}", " / ".join(run.get("console_tail", []))[-200:]))
    return "\n".join(lines)


def write_json(out: Path | None, report: dict[str, object]) -> None:
    if out is not None:
        out.write_text(json.dumps(report, indent=2, default=str) + "\n")


def publish(args: argparse.Namespace, why: str, guest: str, results: object,
            render: Callable[[dict[str, object]], str]) -> int:
    """What every rig bench ends with: the report (where it ran, the guest, the runs, the results)
    printed as markdown and, with --json, written whole."""
    report: dict[str, object] = {**where(why), "guest": guest, "runs": args.runs, "results": results}
    print(render(report))
    write_json(args.json, report)
    return 0


def run(main: Callable[[list[str]], int]) -> NoReturn:
    """Exit with ``main``'s status; a firelet error as one line and its exit code."""
    try:
        sys.exit(main(sys.argv[1:]))
    except FireletError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
