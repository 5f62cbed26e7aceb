#!/usr/bin/env python3
"""Split each VMM's boot into its own start and the guest's: exec -> first guest entry -> READY.

    firelet nested -- .venv/bin/python bench/first_entry.py [--runs N]

Run it where KVM is (inside the nested rig here) as root: it enables the
``kvm:kvm_entry`` tracepoint with the trace clock set to CLOCK_MONOTONIC, starts
each VMM (quiet boot, the same kernel, root image and command line as
bench/boot.py), and reads the time of the first entry into the guest. Prints
one line per boot and the medians.

It also starts the same guest from a Firecracker config file through
``firelet-vmm`` twice: cold (exec) and warm (a launch request to a warm launcher
started before the runs, which forks it; issue #15). For the warm one the clock
starts at the launch request.

Beside the VMMs it runs ``bench/python_floor.py``: the interpreter plus the
KVM calls every VMM makes and one guest entry, no firelet code. Its exec ->
first entry is the least any VMM written in Python can take on this machine,
so firelet's own cost is the distance from that floor. ``--floor-import
MODS`` (repeatable) adds a floor row that first imports MODS (comma-separated),
e.g. ``msgspec``: the price of a library before the guest can start.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import rigrun
from launchers import LAUNCHERS, BootInputs, firelet_vmm_command

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


WARM, COLD = "firelet-warm", "firelet-vmm-cold"


def _vmm_config(boot_inputs: BootInputs, directory: Path) -> Path:
    """The same guest as a Firecracker config file, for firelet-vmm cold and warm."""
    config = directory / "vm.json"
    config.write_text(json.dumps({
        "boot-source": {"kernel_image_path": str(boot_inputs.vmlinux), "boot_args": boot_inputs.cmdline},
        "drives": [{"drive_id": "rootfs", "path_on_host": str(boot_inputs.rootfs), "is_root_device": True,
                    "is_read_only": False}],
        "machine-config": {"vcpu_count": boot_inputs.vcpus, "mem_size_mib": boot_inputs.mem_mib}}))
    return config


def boot_warm(launcher: Any, config: Path, trace: Path, run: int) -> tuple[float, float]:
    """(first guest entry, READY) in seconds after the launch request to a warm launcher."""
    console = config.parent / "console"
    console.touch()
    (trace / "trace").write_text("")
    t0 = time.monotonic()
    launcher.launch(f"w{run}", ["--no-api", "--config-file", str(config)], stdout=str(console),
                    stderr=str(console))
    ready = None
    deadline = t0 + 600
    while ready is None and time.monotonic() < deadline:
        if b"FIRELET-READY" in console.read_bytes():
            ready = time.monotonic() - t0
        else:
            time.sleep(0.002)
    launcher.wait(f"w{run}", timeout_s=120)
    launcher.reap()
    with open(trace / "trace") as f:
        first = next((float(m.group(1)) - t0 for line in f if (m := _ENTRY.search(line))), None)
    if ready is None or first is None:
        raise SystemExit(f"{WARM}: no READY marker or no guest entry traced; console tail: "
                         f"{console.read_bytes()[-300:]!r}")
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
    from firelet.launcher.client import Launcher

    results: dict[str, list[tuple[float, float | None]]] = {launcher.name: [] for launcher in LAUNCHERS}
    results |= {COLD: [], WARM: []}
    work = Path(tempfile.mkdtemp(prefix="fe-", dir="/tmp"))
    warm = Launcher.start(work / "launcher.sock", log_path=work / "launcher.log")
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
            for name in (COLD, WARM):
                with tempfile.TemporaryDirectory(dir=work) as tmp:
                    rootfs = copy_rootfs(Path(tmp) / "root.ext4", source=template)
                    config = _vmm_config(BootInputs(vmlinux, rootfs, cmdline), Path(tmp))
                    first, ready = (boot_warm(warm, config, trace, i) if name == WARM else
                                    boot([*firelet_vmm_command(), "--no-api", "--config-file", str(config)], trace))
                results[name].append((first, ready))
                print(f"{name} run {i + 1}: first guest entry {first * 1000:.0f} ms, "
                      f"READY {(ready or 0) * 1000:.0f} ms", flush=True)
            for name, extra in floors.items():
                first, _ = boot([sys.executable, str(_FLOOR_SCRIPT), *extra, str(vmlinux)], trace, marker=False)
                results[name].append((first, None))
                print(f"{name} run {i + 1}: first guest entry {first * 1000:.0f} ms", flush=True)
    finally:
        _set_tracepoint(trace, False)
        warm.close()
        shutil.rmtree(work, ignore_errors=True)
    med = statistics.median
    for name, runs in results.items():
        if name.startswith(FLOOR):
            print(f"{name}: exec -> first guest entry {med(f for f, _ in runs) * 1000:.0f} ms "
                  f"(medians of {len(runs)}; the interpreter and the KVM calls alone, no guest boot)")
            continue
        start = "launch request" if name == WARM else "exec"
        print(f"{name}: {start} -> first guest entry {med(f for f, _ in runs) * 1000:.0f} ms, "
              f"first entry -> READY {med((r or 0) - f for f, r in runs) * 1000:.0f} ms, "
              f"{start} -> READY {med(r or 0 for _, r in runs) * 1000:.0f} ms (medians of {len(runs)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
