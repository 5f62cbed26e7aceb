#!/usr/bin/env python3
"""Split each VMM's boot into its own start and the guest's: exec -> first guest entry -> READY.

    firelet nested -- .venv/bin/python bench/first_entry.py [--runs N]

Run it where KVM is (inside the nested rig here) as root: it enables the
``kvm:kvm_entry`` tracepoint with the trace clock set to CLOCK_MONOTONIC, starts
each VMM (quiet boot, the same kernel, root image and command line as
bench/boot.py), and reads the time of the first entry into the guest. Prints
one line per boot and the medians.

Beside the VMMs it runs ``bench/python_floor.py``: the interpreter plus the
KVM calls every VMM makes and one guest entry, no firelet code. Its exec ->
first entry is the least any VMM written in Python can take on this machine,
so firelet's own cost is the distance from that floor. ``--floor-import
MODS`` (repeatable) adds a floor row that first imports MODS (comma-separated),
e.g. ``msgspec``: the price of a library before the guest can start.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import rigrun
from launchers import LAUNCHERS, BootInputs

TRACING = Path("/sys/kernel/tracing")
_ENTRY = re.compile(r"\s(\d+\.\d+): kvm_entry")
_CMDLINE = f"{rigrun.BASE_CMDLINE} quiet"  # bench/boot.py --quiet's


def _tracing() -> Path:
    if not (TRACING / "trace").exists():
        subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACING)], check=True)
    (TRACING / "trace_clock").write_text("mono")
    (TRACING / "buffer_size_kb").write_text("16384")
    return TRACING


def _set_tracepoint(trace: Path, on: bool) -> None:
    """Once per run, not per boot: turning a tracepoint on or off live-patches the kernel's
    code, which under the rig's multi-threaded TCG can hang the emulated machine."""
    (trace / "events/kvm/kvm_entry/enable").write_text("1" if on else "0")


FLOOR = "python-floor"
_FLOOR_SCRIPT = Path(__file__).resolve().parent / "python_floor.py"


def boot(argv: list[str], trace: Path, *, marker: bool = True) -> tuple[float, float | None]:
    """(first guest entry, READY) in seconds after exec; READY is None when ``marker`` is False."""
    (trace / "trace").write_text("")
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    out, ready = b"", None
    while chunk := os.read(proc.stdout.fileno(), 65536):
        out += chunk
        if ready is None and b"FIRELET-READY" in out:
            ready = time.monotonic() - t0
    proc.wait()
    with open(trace / "trace") as f:
        first = next((float(m.group(1)) - t0 for line in f if (m := _ENTRY.search(line))), None)
    if (marker and ready is None) or first is None:
        raise SystemExit(f"{argv[0]}: no READY marker or no guest entry traced; console tail: {out[-300:]!r}")
    return first, ready


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--floor-import", action="append", default=[], metavar="MODS",
                   help="also run the floor after importing these modules (comma-separated; repeatable)")
    args = p.parse_args()
    from firelet.devtools.images import build_kernel, build_rootfs, copy_rootfs, guest_cmdline_for

    trace = _tracing()
    vmlinux, template = build_kernel().vmlinux, build_rootfs()
    cmdline = f"{_CMDLINE} {guest_cmdline_for('true')}"
    results: dict[str, list[tuple[float, float | None]]] = {launcher.name: [] for launcher in LAUNCHERS}
    floors = {FLOOR: []} | {f"{FLOOR}+{mods}": ["--import", mods] for mods in args.floor_import}
    for name in floors:
        results[name] = []
    _set_tracepoint(trace, True)
    try:
        for i in range(args.runs):
            for launcher in LAUNCHERS:
                with tempfile.TemporaryDirectory() as tmp:
                    rootfs = copy_rootfs(Path(tmp) / "root.ext4", source=template)
                    first, ready = boot(launcher.argv(BootInputs(vmlinux, rootfs, cmdline)), trace)
                results[launcher.name].append((first, ready))
                print(f"{launcher.name} run {i + 1}: first guest entry {first * 1000:.0f} ms, "
                      f"READY {ready * 1000:.0f} ms", flush=True)
            for name, extra in floors.items():
                first, _ = boot([sys.executable, str(_FLOOR_SCRIPT), *extra, str(vmlinux)], trace, marker=False)
                results[name].append((first, None))
                print(f"{name} run {i + 1}: first guest entry {first * 1000:.0f} ms", flush=True)
    finally:
        _set_tracepoint(trace, False)
    med = statistics.median
    for name, runs in results.items():
        if name.startswith(FLOOR):
            print(f"{name}: exec -> first guest entry {med(f for f, _ in runs) * 1000:.0f} ms "
                  f"(medians of {len(runs)}; the interpreter and the KVM calls alone, no guest boot)")
            continue
        print(f"{name}: exec -> first guest entry {med(f for f, _ in runs) * 1000:.0f} ms, "
              f"first entry -> READY {med(r - f for f, r in runs) * 1000:.0f} ms, "
              f"exec -> READY {med(r for _, r in runs) * 1000:.0f} ms (medians of {len(runs)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
