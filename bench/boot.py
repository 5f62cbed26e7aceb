#!/usr/bin/env python3
"""The yardstick: boot the same guest with each VMM, N times, and compare.

    python3 bench/boot.py [--runs N] [--json out.json]

For each VMM in ``bench/launchers.py`` it measures, per boot: wall time from
starting the VMM process to the guest's ``FIRELET-READY`` line, the guest's
own uptime at that line, and the VMM's RSS and PSS about 1 s later while the
guest idles (its command is ``sleep 3``); then the guest reboots and the VMM
exits. It prints a markdown table (median [min-max], ratios against QEMU
measured in the same run) and optionally writes JSON.

Where the local /dev/kvm cannot boot stock Linux (firelet.devtools.nested.detect),
the guest images are built here and the script re-runs itself inside the
nested rig (``FIRELET_KVM=direct|nested`` overrides the choice).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from firelet.errors import FireletError

from launchers import LAUNCHERS, BootInputs, Launcher

_HOST_ENV = "FIRELET_BENCH_HOST"   # the real machine's description, handed into the rig
_RIG_ENV = "FIRELET_BENCH_RIG"
_BASE_CMDLINE = "console=ttyS0 reboot=k panic=-1 root=/dev/vda rw"
_RSS_DELAY = 1.0  # s after the marker: the guest idles, the VMM's memory has settled


def _parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/boot.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="boots per VMM (default 3)")
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the results as JSON")
    p.add_argument("--guest-cmd", default="sleep 3", help="what the guest runs after the marker")
    p.add_argument("--quiet", action="store_true",
                   help="boot with 'quiet': the kernel's boot log stays off the serial console")
    p.add_argument("--boot-timeout", type=float, default=300.0, metavar="S", help="per boot (default 300)")
    p.add_argument("--rig-mem", type=int, default=4096, metavar="MiB", help="outer rig memory")
    p.add_argument("--rig-smp", type=int, default=2, metavar="N", help="outer rig CPUs")
    p.add_argument("--vmlinux", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--rootfs", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    return args


def machine_description() -> str:
    """Cores, RAM and kernel of the machine this runs on."""
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    return (f"{os.cpu_count()} cores, {mem_kib / 2**20:.1f} GiB RAM, "
            f"Linux {platform.release()}, Python {platform.python_version()}")


def memory_of(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of a process in MiB, from /proc/PID/smaps_rollup."""
    values = {"Rss:": 0, "Pss:": 0}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        fields = line.split()
        if fields and fields[0] in values:
            values[fields[0]] = int(fields[1])
    return values["Rss:"] / 1024, values["Pss:"] / 1024


def boot_once(launcher: Launcher, boot: BootInputs, timeout: float) -> dict[str, object]:
    """One boot: process start -> ready marker -> memory sample -> the VMM's exit."""
    from firelet.devtools.images import parse_exit_status, parse_ready_uptime

    console = bytearray()
    t0 = time.monotonic()
    proc = subprocess.Popen(launcher.argv(boot), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    result: dict[str, object] = {}
    ready_at: float | None = None
    deadline = t0 + timeout
    try:
        while time.monotonic() < deadline:
            now = time.monotonic()
            if ready_at is not None and "rss_mib" not in result and now >= ready_at + _RSS_DELAY:
                result["rss_mib"], result["pss_mib"] = memory_of(proc.pid)
            wait = 0.05 if ready_at is not None and "rss_mib" not in result else 0.5
            if not sel.select(timeout=wait):
                continue
            data = os.read(proc.stdout.fileno(), 65536)
            if not data:
                break
            console += data
            text = console.decode("utf-8", "replace")
            if ready_at is None and (uptime := parse_ready_uptime(text)) is not None:
                ready_at = time.monotonic()
                result["boot_ms"] = (ready_at - t0) * 1000
                result["uptime_ms"] = uptime * 1000
            if parse_exit_status(text) is not None:
                break
    finally:
        result["clean"] = launcher.stop(proc, grace=max(0.0, min(10.0, deadline - time.monotonic())))
        proc.stdout.close()
    if "boot_ms" not in result or "rss_mib" not in result:
        tail = console.decode("utf-8", "replace").replace("\r", "").strip().splitlines()[-5:]
        result["error"] = "no FIRELET-READY marker" if "boot_ms" not in result else "exited before the memory sample"
        result["console_tail"] = tail
    return result


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def measure(args: argparse.Namespace, vmlinux: Path, rootfs_template: Path) -> dict[str, object]:
    from firelet.devtools.images import copy_rootfs, guest_cmdline_for

    base = f"{_BASE_CMDLINE} quiet" if args.quiet else _BASE_CMDLINE
    cmdline = f"{base} {guest_cmdline_for(args.guest_cmd)}"
    results: dict[str, object] = {}
    for launcher in LAUNCHERS:
        why_not = launcher.available()
        if why_not:
            results[launcher.name] = {"unavailable": why_not}
            continue
        boots = []
        for i in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="firelet-bench-") as tmp:
                rootfs = copy_rootfs(Path(tmp) / "root.ext4", source=rootfs_template)
                boot = BootInputs(vmlinux=vmlinux, rootfs=rootfs, cmdline=cmdline)
                one = boot_once(launcher, boot, args.boot_timeout)
            print(f"# {launcher.name} run {i + 1}/{args.runs}: "
                  + ", ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in one.items()),
                  file=sys.stderr, flush=True)
            boots.append(one)
        good = [b for b in boots if "error" not in b]
        results[launcher.name] = {
            "boots": boots,
            **{key: _stats([float(b[key]) for b in good]) for key in ("boot_ms", "uptime_ms", "rss_mib", "pss_mib")},
            "clean_exits": sum(1 for b in boots if b.get("clean")),
        }
    return results


def _range(s: dict[str, float] | None, fmt: str = "{:.0f}") -> str:
    if s is None:
        return "-"
    return f"{fmt.format(s['median'])} [{fmt.format(s['min'])}-{fmt.format(s['max'])}]"


def _ratio(s: dict[str, float] | None, ref: dict[str, float] | None) -> str:
    if not s or not ref or not ref["median"]:
        return "-"
    return f"{s['median'] / ref['median']:.2f}x"


def render(report: dict[str, object]) -> str:
    results: dict[str, dict] = report["results"]  # type: ignore[assignment]
    ref = results.get(LAUNCHERS[0].name, {})
    lines = [
        f"Machine: {report['machine']}",
        f"Rig: {report['rig']}",
        f"Guest: {report['guest']}; {report['runs']} boots per VMM; medians [min-max]",
        "",
        "| VMM | boot ms (start -> READY) | guest uptime ms | RSS MiB | PSS MiB "
        "| ratio vs QEMU (boot / RSS / PSS) | clean exits |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if "unavailable" in r:
            lines.append(f"| {name} | unavailable: {r['unavailable']} | | | | | |")
            continue
        ratios = " / ".join(_ratio(r[k], ref.get(k)) for k in ("boot_ms", "rss_mib", "pss_mib"))
        lines.append(
            f"| {name} | {_range(r['boot_ms'])} | {_range(r['uptime_ms'])} | {_range(r['rss_mib'], '{:.1f}')} "
            f"| {_range(r['pss_mib'], '{:.1f}')} | {ratios} | {r['clean_exits']}/{len(r['boots'])} |")
        for b in r["boots"]:
            if "error" in b:
                tail = " / ".join(b.get("console_tail", []))[-200:]
                lines.append(f"|  ↳ failed: {b['error']} | {tail} | | | | | |")
    return "\n".join(lines)


def _run_in_rig(args: argparse.Namespace, argv: list[str]) -> int:
    """Build the images here (the rig sees the cache read-only), then re-run inside the rig."""
    from firelet.devtools.images import build_kernel, build_rootfs
    from firelet.devtools.nested import run_in_rig

    kernel = build_kernel()
    rootfs = build_rootfs()
    os.environ[_HOST_ENV] = machine_description()
    os.environ[_RIG_ENV] = (f"nested: outer QEMU TCG (-cpu EPYC,+svm,+npt), smp {args.rig_smp}, "
                            f"{args.rig_mem} MiB, kvm-amd inside")
    shares = []
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        shares.append(args.json.resolve().parent)
        argv = [*argv, "--json", str(args.json.resolve())]
    inner = [sys.executable, str(Path(__file__).resolve()), *argv,
             "--vmlinux", str(kernel.vmlinux), "--rootfs", str(rootfs)]
    timeout = 600 + args.runs * len(LAUNCHERS) * args.boot_timeout
    return run_in_rig(inner, timeout=timeout, shares=shares, mem_mib=args.rig_mem, smp=args.rig_smp,
                      cwd=Path(__file__).resolve().parent.parent)


def main(argv: list[str]) -> int:
    args = _parse_args(argv)
    from firelet.devtools.nested.detect import local_kvm_runs_stock_guests

    ok, why = local_kvm_runs_stock_guests()
    if not ok:
        print(f"bench: {why}; running inside the nested rig", file=sys.stderr, flush=True)
        return _run_in_rig(args, [a for a in argv if a != "--json" and a != str(args.json)])
    if args.vmlinux is not None and args.rootfs is not None:
        vmlinux, rootfs = args.vmlinux, args.rootfs
    else:
        from firelet.devtools.images import build_kernel, build_rootfs

        vmlinux, rootfs = build_kernel().vmlinux, build_rootfs()
    report = {
        "machine": os.environ.get(_HOST_ENV) or machine_description(),
        "rig": os.environ.get(_RIG_ENV) if os.environ.get("FIRELET_IN_RIG") == "1" else f"none ({why})",
        "guest": (f"{vmlinux.name} + ext4 root, 128 MiB, 1 vCPU, command {args.guest_cmd!r}, "
                  f"kernel log {'off (quiet)' if args.quiet else 'on the serial console'}"),
        "runs": args.runs,
        "results": measure(args, vmlinux, rootfs),
    }
    print(render(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except FireletError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
