#!/usr/bin/env python3
"""Disk throughput inside the guest, firelet against QEMU microvm, in the same run.

    python3 bench/disk.py [--runs N] [--mib M] [--seconds S] [--json out.json]

Each VMM in ``bench/launchers.py`` boots the same kernel and root image with one extra
raw data drive (virtio-blk over virtio-mmio for both: QEMU's ``-device
virtio-blk-device``, firelet's ``--drive``). In the guest one static program
(``bench/diskprobe.c``, compiled here and written into each run's copy of the root
image) measures with O_DIRECT on the guest's clock: sequential 1 MiB writes (then
fdatasync) and reads over M MiB, in MB/s, and 4 KiB reads at random offsets for S
seconds, in IOPS. The report gives medians [min-max] and ratios against QEMU. No rate
limiter is set: this is the VMM's own I/O path.

Where the local /dev/kvm cannot boot stock Linux, the script re-runs itself in the
nested rig (as ``bench/boot.py`` does); the figures are then those of a software CPU.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from firelet.errors import FireletError

import rigrun
from launchers import LAUNCHERS, BootInputs, Launcher

_PROBE_SOURCE = Path(__file__).resolve().parent / "diskprobe.c"
_RESULT = re.compile(r"DISKPROBE seq_write_MBps=([\d.]+) seq_read_MBps=([\d.]+) rand_read_4k_iops=([\d.]+)")
METRICS = ("seq_write_MBps", "seq_read_MBps", "rand_read_4k_iops")


def _parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/disk.py", description=__doc__.split("\n\n")[0])
    rigrun.add_options(p, runs=1, boot_timeout=600.0)
    p.add_argument("--mib", type=int, default=64, help="MiB written and read sequentially (default 64)")
    p.add_argument("--seconds", type=float, default=5.0, help="random-read duration (default 5)")
    p.add_argument("--probe", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.runs < 1 or args.mib < 1 or args.seconds <= 0:
        p.error("--runs and --mib must be at least 1, --seconds positive")
    return args


def build_probe() -> Path:
    """The static guest program, compiled once per source version into firelet's cache."""
    from firelet.devtools.cache import cache_dir, content_key

    source = _PROBE_SOURCE.read_bytes()
    out = cache_dir() / "bench" / f"diskprobe-{content_key(source)}"
    if not out.exists():
        if shutil.which("gcc") is None:
            raise FireletError("gcc is missing: apt-get install gcc libc6-dev (bench/disk.py builds its guest probe)")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        subprocess.run(["gcc", "-static", "-O2", "-o", str(tmp), str(_PROBE_SOURCE)], check=True)
        os.replace(tmp, out)
    return out


def _add_probe(image: Path, probe: Path) -> None:
    """Write the probe into the root image as /bin/diskprobe (debugfs keeps its mode bits)."""
    result = subprocess.run(["debugfs", "-w", "-R", f"write {probe} /bin/diskprobe", str(image)],
                            capture_output=True, text=True)
    if result.returncode != 0 or "Allocated inode" not in result.stdout + result.stderr:
        raise FireletError(f"could not write the probe into {image}: {result.stderr.strip() or result.stdout.strip()}")


def run_once(launcher: Launcher, boot: BootInputs, timeout: float) -> dict[str, Any]:
    """One boot; the probe's figures, or an error and the console's tail."""
    start = time.monotonic()
    try:
        proc = subprocess.run(launcher.argv(boot), stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
        console = proc.stdout.decode("utf-8", "replace").replace("\r", "")
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout or b""
        console = out.decode("utf-8", "replace") if isinstance(out, bytes) else out
    found = _RESULT.search(console)
    if found is None:
        return {"error": "no DISKPROBE line", "console_tail": console.strip().splitlines()[-8:]}
    return {**dict(zip(METRICS, map(float, found.groups()), strict=True)), "wall_s": time.monotonic() - start}


def measure(args: argparse.Namespace, vmlinux: Path, rootfs_template: Path, probe: Path) -> dict[str, object]:
    from firelet.devtools.images import guest_cmdline_for

    data_bytes = (args.mib + 8) << 20
    # The data drive is the one of this size (QEMU and firelet may number the drives differently).
    command = (f"for d in /sys/block/vd*; do [ $(cat $d/size) = {data_bytes >> 9} ] && dev=/dev/${{d##*/}}; done; "
               f"/bin/diskprobe $dev {args.mib} {args.seconds}")
    cmdline = f"{rigrun.BASE_CMDLINE} {guest_cmdline_for(command)}"

    def one_run(launcher: Launcher, tmp: Path, rootfs: Path) -> dict[str, Any]:
        _add_probe(rootfs, probe)
        data = tmp / "data.img"
        with data.open("wb") as f:
            f.truncate(data_bytes)
        boot = BootInputs(vmlinux=vmlinux, rootfs=rootfs, cmdline=cmdline, mem_mib=256, drives=(data,))
        return run_once(launcher, boot, args.boot_timeout)

    return rigrun.measure_each(args.runs, rootfs_template, one_run, METRICS)


def _cell(s: dict[str, float] | None, ref: dict[str, float] | None) -> str:
    if s is None:
        return "-"
    text = f"{s['median']:.1f}" if s["min"] == s["max"] else f"{s['median']:.1f} [{s['min']:.1f}-{s['max']:.1f}]"
    if ref and ref["median"]:
        text += f" ({s['median'] / ref['median']:.2f}x)"
    return text


def render(report: dict[str, Any]) -> str:
    return rigrun.render(report, f"{report['runs']} boot(s) per VMM; medians [min-max] (ratio vs QEMU)",
                         ["seq write MB/s", "seq read MB/s", "4 KiB random read IOPS"],
                         lambda r, ref: [_cell(r[m], ref.get(m)) for m in METRICS])


def main(argv: list[str]) -> int:
    args = _parse_args(argv)
    here, why = rigrun.kvm_here()
    if not here:
        return rigrun.rerun_in_rig(__file__, argv, args, why, boots=args.runs * len(LAUNCHERS),
                                   extra=("--probe", str(build_probe())))
    vmlinux, rootfs = rigrun.guest_images(args)
    probe = args.probe if args.probe is not None else build_probe()
    guest = (f"{vmlinux.name} + ext4 root, 256 MiB, 1 vCPU, a raw data drive; {args.mib} MiB sequential "
             f"(1 MiB O_DIRECT), {args.seconds:g} s of 4 KiB O_DIRECT random reads")
    return rigrun.publish(args, why, guest, measure(args, vmlinux, rootfs, probe), render)


if __name__ == "__main__":
    rigrun.run(main)
