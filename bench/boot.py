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
import os
import selectors
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import rigrun
from launchers import LAUNCHERS, BootInputs, Launcher

_RSS_DELAY = 1.0  # s after the marker: the guest idles, the VMM's memory has settled


def _parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/boot.py", description=__doc__.split("\n\n")[0])
    rigrun.add_options(p, runs=3, boot_timeout=300.0)
    p.add_argument("--guest-cmd", default="sleep 3", help="what the guest runs after the marker")
    p.add_argument("--quiet", action="store_true",
                   help="boot with 'quiet': the kernel's boot log stays off the serial console")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    return args


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


def measure(args: argparse.Namespace, vmlinux: Path, rootfs_template: Path) -> dict[str, object]:
    from firelet.devtools.images import guest_cmdline_for

    base = f"{rigrun.BASE_CMDLINE} quiet" if args.quiet else rigrun.BASE_CMDLINE
    cmdline = f"{base} {guest_cmdline_for(args.guest_cmd)}"

    def one_run(launcher: Launcher, _tmp: Path, rootfs: Path) -> dict[str, object]:
        return boot_once(launcher, BootInputs(vmlinux=vmlinux, rootfs=rootfs, cmdline=cmdline), args.boot_timeout)

    return rigrun.measure_each(args.runs, rootfs_template, one_run, ("boot_ms", "uptime_ms", "rss_mib", "pss_mib"))


def _range(s: dict[str, float] | None, fmt: str = "{:.0f}") -> str:
    if s is None:
        return "-"
    return f"{fmt.format(s['median'])} [{fmt.format(s['min'])}-{fmt.format(s['max'])}]"


def _ratio(s: dict[str, float] | None, ref: dict[str, float] | None) -> str:
    if not s or not ref or not ref["median"]:
        return "-"
    return f"{s['median'] / ref['median']:.2f}x"


def _cells(r: dict[str, Any], ref: dict[str, Any]) -> list[str]:
    ratios = " / ".join(_ratio(r[k], ref.get(k)) for k in ("boot_ms", "rss_mib", "pss_mib"))
    clean = sum(1 for b in r["runs"] if b.get("clean"))
    return [_range(r["boot_ms"]), _range(r["uptime_ms"]), _range(r["rss_mib"], "{:.1f}"),
            _range(r["pss_mib"], "{:.1f}"), ratios, f"{clean}/{len(r['runs'])}"]


def render(report: dict[str, Any]) -> str:
    return rigrun.render(report, f"{report['runs']} boots per VMM; medians [min-max]",
                         ["boot ms (start -> READY)", "guest uptime ms", "RSS MiB", "PSS MiB",
                          "ratio vs QEMU (boot / RSS / PSS)", "clean exits"], _cells)


def main(argv: list[str]) -> int:
    args = _parse_args(argv)
    here, why = rigrun.kvm_here()
    if not here:
        return rigrun.rerun_in_rig(__file__, argv, args, why, boots=args.runs * len(LAUNCHERS))
    vmlinux, rootfs = rigrun.guest_images(args)
    guest = (f"{vmlinux.name} + ext4 root, 128 MiB, 1 vCPU, command {args.guest_cmd!r}, "
             f"kernel log {'off (quiet)' if args.quiet else 'on the serial console'}")
    return rigrun.publish(args, why, guest, measure(args, vmlinux, rootfs), render)


if __name__ == "__main__":
    rigrun.run(main)
