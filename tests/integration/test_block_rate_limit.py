"""Drive rate limiters measured from inside a real guest (issue #13, "Done when"), in the nested rig.

One firelet-vmm, configured and driven through its API socket, with four data drives:
``bw`` to be limited in bytes/s, ``ops`` in requests/s, ``free`` unlimited, ``go`` a flag.
The guest first measures ``free`` (1 MiB and 4 KiB O_DIRECT reads) and waits for ``go``;
the test then PATCHes the limits on, live, and sets the flag. The guest reads ``bw`` with
one dd per phase, printing its uptime between them: 15 MiB spend the initial bucket, then
30 MiB must come at the limit within ±10 %. While the next 20 MiB are being read, a PATCH
doubles the limit, live; they spend its new bucket, and the 30 MiB after them must come at
the doubled limit. Last, four dd's at once of 4 KiB direct reads from ``ops``
must hold its limit within ±10 %.

These are correctness tests of the limiter: the band is the requirement (a limiter that
lets too much through, or loses time, fails it). So a limit must bind: the limits are the
issue's figures (10 MB/s, PATCHed to 20; 200 ops/s) where the unlimited drive here does at
least five times as much, else a fifth of what it does. The rig's software CPU swings
between days: its unlimited drive has done 7-117 MB/s, and 10-230 4 KiB reads/s one at a
time (345 with four readers), so the bandwidth often runs at the issue's figures there and
the ops limit has not yet. Targets other than the issue's: FIRELET_TEST_DRIVE_BW,
FIRELET_TEST_DRIVE_OPS.

Why one dd per phase: a measured span must begin and end with the bucket empty (the
limiter binding), or what the bucket held at either end counts as rate. A new dd every few
MiB, under the rig's software CPU, leaves the drive idle long enough for the bucket to
refill across a step: 5 MiB steps measured +8-12 % at 20 MB/s. Between two dd's a bucket
keeps what refills only up to its size, so the bandwidth buckets hold 8 MB (0.4 s at
20 MB/s) and the ops bucket two seconds' worth.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from firelet.devtools.cache import repo_root
from firelet.devtools.images import guest_cmdline_for

from conftest import BOOT_TIMEOUT_S, api_ok, binding_limit, fail_if_a_guest_clock_went_back, file_tail, guest_marks

MiB = 1 << 20
#: Issue #13's figures: the limits wherever they bind (bytes/s, requests/s).
BW_TARGET = int(os.environ.get("FIRELET_TEST_DRIVE_BW", "10000000"))
OPS_TARGET = int(os.environ.get("FIRELET_TEST_DRIVE_OPS", "200"))
BW_FLOOR, OPS_FLOOR = 200_000, 2  # below these the test would take too long: the rig is broken
BUCKET = 8_000_000  # bytes, before and after the PATCH
OPS_WARMUP_S, OPS_COUNT_S = 4, 12  # seconds' worth of 4 KiB reads at the limit
#: 4 KiB readers at once: one request at a time gives the rig's drive 130-230 reads/s, below what
#: a 200 ops/s limit needs to bind; several keep the queue fuller.
READERS = 4
BASE_READS = 50  # per reader, unlimited
#: The phases' reads of ``bw`` (MiB, offset MiB), a MARK before each and after the last. A warm-up must
#: outlast a full bucket and what passes while it empties (8 MB * U / (U - limit) at an unlimited U
#: five times the limit: 10 MB; 13.3 MB against the doubled limit, the PATCH landing early in it).
PHASES = ((15, 0), (30, 15), (20, 0), (30, 20))
MEASURED_MIB = 30
TOLERANCE = 0.10

GUEST = f"""r(){{ dd if=/dev/$1 of=/dev/null bs=$2 count=$3 skip=$4 iflag=direct 2>/dev/null || echo DDFAIL $1; }}
p(){{ j=0; while [ $j -lt {READERS} ]; do r $1 4k $2 $(($3+j*$2)) & j=$((j+1)); done; wait; }}
read s b </proc/uptime; r vdd 1M 10 0; read e b </proc/uptime; echo BASE-BW $s $e
read s b </proc/uptime; p vdd {BASE_READS} 0; read e b </proc/uptime; echo BASE-OPS $s $e
until dd if=/dev/vde bs=512 count=1 iflag=direct 2>/dev/null | grep -q ^go; do sleep 0.2; done
m(){{ read t b </proc/uptime; echo MARK $1 $t; }}
m 0; {"; ".join(f"r vdb 1M {n} {at}; m {i + 1}" for i, (n, at) in enumerate(PHASES))}
set -- $(dd if=/dev/vde bs=512 count=1 iflag=direct 2>/dev/null | head -n 1); p vdc $2 0
read s b </proc/uptime; p vdc $3 $(({READERS}*$2)); read e b </proc/uptime; echo OPS $s $e"""



def _limiter(bandwidth: int | None = None, ops: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if bandwidth is not None:
        out["bandwidth"] = {"size": BUCKET, "refill_time": BUCKET * 1000 // bandwidth}
    if ops is not None:
        out["ops"] = {"size": 2 * ops, "refill_time": 2000}
    return out


def _serial(path: Path) -> str:
    return path.read_text(errors="replace").replace("\r", "") if path.exists() else ""


def _note_marks(serial: Path, seen: dict[int, float]) -> None:
    now = time.monotonic()
    for step in guest_marks(_serial(serial)):
        seen.setdefault(step, now)


def _span(text: str, name: str) -> float:
    found = re.search(rf"^{name} ([\d.]+) ([\d.]+)\n", text, re.MULTILINE)  # a whole line (conftest.guest_marks)
    assert found, f"no {name} line in the guest's output:\n{text[-3000:]}"
    start, end = float(found.group(1)), float(found.group(2))
    fail_if_a_guest_clock_went_back({0: start, 1: end}, f" (the {name} span)\n{text[-3000:]}")
    return end - start


def _within(measured: float, limit: float) -> bool:
    return abs(measured - limit) <= TOLERANCE * limit


def _await(serial: Path, pattern: str, proc: subprocess.Popen[bytes], stderr: Path) -> str:
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    while not re.search(pattern, text := _serial(serial), re.MULTILINE):
        assert proc.poll() is None, f"firelet-vmm ended ({proc.returncode}): {file_tail(stderr)}\n{text[-3000:]}"
        assert time.monotonic() < deadline, f"no {pattern!r} on the console in {BOOT_TIMEOUT_S} s:\n{text[-3000:]}"
        time.sleep(0.05)
    return text


def test_drive_rate_limits_hold_and_a_patch_applies_live(kernel, rootfs: Path, tmp_path: Path) -> None:
    sock, serial, metrics = tmp_path / "api.sock", tmp_path / "serial.out", tmp_path / "metrics.json"
    drives = {}
    for name in ("bw", "ops", "free", "go"):
        drives[name] = tmp_path / f"{name}.img"
        with drives[name].open("wb") as f:
            f.truncate(64 * MiB if name != "go" else 4096)  # sparse: reads cost the host nothing
    env = dict(os.environ, PYTHONPATH=str(repo_root()) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    stderr = tmp_path / "vmm.err"
    with stderr.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "firelet.cli.vmm", "--api-sock", str(sock), "--id", "blkrate"],
                                env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 60
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        api_ok(sock, "PUT", "/boot-source", {"kernel_image_path": str(kernel.vmlinux),
                                             "boot_args": f"console=ttyS0 reboot=k panic=-1 {guest_cmdline_for(GUEST)}"})
        api_ok(sock, "PUT", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": str(rootfs),
                                               "is_root_device": True, "is_read_only": True})
        for name in ("bw", "ops", "free", "go"):
            api_ok(sock, "PUT", f"/drives/{name}", {"drive_id": name, "path_on_host": str(drives[name]),
                                                    "is_root_device": False, "is_read_only": True})
        api_ok(sock, "PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 256})
        api_ok(sock, "PUT", "/serial", {"serial_out_path": str(serial)})
        api_ok(sock, "PUT", "/metrics", {"metrics_path": str(metrics)})
        api_ok(sock, "PUT", "/actions", {"action_type": "InstanceStart"})

        text = _await(serial, r"^BASE-OPS .*\n", proc, stderr)
        base_bw, base_ops = 10 * MiB / _span(text, "BASE-BW"), READERS * BASE_READS / _span(text, "BASE-OPS")
        bw_limit, ops_limit = binding_limit(BW_TARGET, base_bw, BW_FLOOR), binding_limit(OPS_TARGET, base_ops, OPS_FLOOR)
        ops_warmup, ops_count = OPS_WARMUP_S * ops_limit // READERS, OPS_COUNT_S * ops_limit // READERS  # each
        api_ok(sock, "PATCH", "/drives/bw", {"drive_id": "bw", "rate_limiter": _limiter(bandwidth=bw_limit)})
        api_ok(sock, "PATCH", "/drives/ops", {"drive_id": "ops", "rate_limiter": _limiter(ops=ops_limit)})
        with drives["go"].open("r+b") as f:
            f.write(f"go {ops_warmup} {ops_count}\n".encode())

        seen: dict[int, float] = {}  # when each MARK reached the test, on its own clock
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while 2 not in seen:  # the first limit's 30 MiB are in; the second warm-up runs
            assert time.monotonic() < deadline and proc.poll() is None, _serial(serial)[-3000:]
            _note_marks(serial, seen)
            time.sleep(0.02)
        api_ok(sock, "PATCH", "/drives/bw", {"drive_id": "bw", "rate_limiter": _limiter(bandwidth=2 * bw_limit)})
        _note_marks(serial, seen)
        assert 3 not in seen, "the PATCH came after the warm-up it was meant to land in"
        exported = api_ok(sock, "GET", "/vm/config")["drives"]
        assert [d["rate_limiter"] for d in exported if d["drive_id"] == "bw"] == [
            {"bandwidth": {**_limiter(bandwidth=2 * bw_limit)["bandwidth"], "one_time_burst": None}, "ops": None}]
        api_ok(sock, "PUT", "/actions", {"action_type": "FlushMetrics"})
        while len(PHASES) not in seen and proc.poll() is None:
            _note_marks(serial, seen)
            time.sleep(0.02)
        assert proc.wait(BOOT_TIMEOUT_S) == 0, file_tail(stderr)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    text = _serial(serial)
    assert "FIRELET-EXIT status=0" in text and "DDFAIL" not in text, text[-3000:]
    marks = guest_marks(text)
    assert sorted(marks) == list(range(len(PHASES) + 1)), text[-3000:]
    fail_if_a_guest_clock_went_back(marks)
    span = MEASURED_MIB * MiB
    before, before_host = span / (marks[2] - marks[1]), span / (seen[2] - seen[1])
    after, after_host = span / (marks[4] - marks[3]), span / (seen[4] - seen[3])
    ops = READERS * ops_count / _span(text, "OPS")
    print(f"\nunlimited drive: {base_bw / 1e6:.2f} MB/s, {base_ops:.1f} 4 KiB reads/s\n"
          f"limited to {bw_limit / 1e6:g} MB/s (the issue's {BW_TARGET / 1e6:g} binds: {bw_limit == BW_TARGET}): "
          f"{before / 1e6:.3f} MB/s over 30 MiB (host clock {before_host / 1e6:.3f})\n"
          f"PATCHed to {2 * bw_limit / 1e6:g} MB/s during the warm-up: {after / 1e6:.3f} MB/s over 30 MiB "
          f"(host clock {after_host / 1e6:.3f})\nlimited to {ops_limit} ops/s (the issue's {OPS_TARGET} binds: "
          f"{ops_limit == OPS_TARGET}): {ops:.2f} ops/s over {READERS * ops_count} reads, {READERS} readers at once",
          flush=True)
    assert _within(before, bw_limit), f"{before / 1e6:.3f} MB/s against a limit of {bw_limit / 1e6:g} MB/s"
    assert _within(after, 2 * bw_limit), f"{after / 1e6:.3f} MB/s against a PATCHed limit of {2 * bw_limit / 1e6:g} MB/s"
    assert _within(ops, ops_limit), f"{ops:.2f} ops/s against a limit of {ops_limit}"

    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert sum(line["block"]["rate_limiter_throttled_events"] for line in lines) > 0
    assert sum(line["block"]["rate_limiter_event_count"] for line in lines) > 0
