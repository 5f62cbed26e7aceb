"""An interface's RX and TX rate limiters measured from inside a real guest (issue #13, "Done when"),
in the rig.

One firelet-vmm, driven through its API, one interface in the test's own namespace. RX: the
host sends a stream; the guest reads it 1 MiB at a time and prints its uptime after each
MiB. TX likewise the other way: the guest writes 1 MiB at a time into a TCP stream to the
host (its send buffer held to 64 KiB, so what it has written is what left it but for that). The first MiBs run unlimited and give the path's own rate here; the test then PATCHes
an RX limit well below it (a limit must bind to be measured: the issue's 10 MB/s is above
what the rig's software CPU moves, 0.4-5 MB/s), and after the new bucket is spent the
guest's clock must show the limit within ±10 % over the next MiBs. A second PATCH doubles
the limit, live, and must show likewise. The measured rates are printed (pytest -s).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_net import MIB_PRIME, Transfer, _env, _tap_tx_dropped, _wait_console, _wait_sock, peer

from firelet.builder.boot import DEFAULT_BOOT_ARGS
from firelet.devtools.images import guest_cmdline_for

import netns
from conftest import (
    BIND,
    BOOT_TIMEOUT_S,
    api_call,
    api_ok,
    binding_limit,
    fail_if_a_driver_saw_a_bad_ring,
    fail_if_a_guest_clock_went_back,
    file_tail,
    guest_marks,
)
from netns import GuestNetns

guest_netns = netns.guest_netns  # the fixture: pytest finds it in this module under its name

MiB = 1 << 20
BASE_STEPS = 4  # unlimited MiBs: the path's own rate
SKIP = 3  # MiBs after a PATCH: the one in flight, one whose MARK may be late, the bucket emptying (_patch)


@dataclass(frozen=True)
class Direction:
    """One direction of eth0: what the guest does, which limiter and counters are its own."""

    name: str
    measured: int  # MiBs measured at each limit
    throttled: str  # eth0's metric: frames refused by the limiter
    woken: str  # eth0's metric: the limiter's timer woke the queue

    @property
    def steps(self) -> int:
        return BASE_STEPS + 2 * (SKIP + self.measured) + 2  # two spare: a PATCH seen one step late

    def guest_command(self, host: object) -> str:
        """``MARK step uptime`` on the console after each MiB read (rx) or written (tx)."""
        loop = "i=0; while [ $i -lt {n} ]; do {io}; read t b </proc/uptime; echo MARK $i $t{to}; i=$((i+1)); done"
        if self.name == "rx":
            reads = loop.format(n=self.steps, io=f"dd of=/dev/null bs={MiB} count=1 iflag=fullblock 2>/dev/null", to="")
            return f"nc {host} 5002 | {{ {reads}; cat >/dev/null; }}; echo rx-done"
        writes = loop.format(n=self.steps, io=f"dd if=/dev/zero bs={MiB} count=1 2>/dev/null", to=" >&2")
        return (f"echo '4096 16384 65536' >/proc/sys/net/ipv4/tcp_wmem; {{ {writes}; }} | nc {host} 5001 >/dev/null; "
                "echo tx-done")


RX = Direction("rx", 29, "rx_rate_limiter_throttled", "rx_event_rate_limiter_count")  # 30.4 MB per limit
TX = Direction("tx", 5, "tx_rate_limiter_throttled", "tx_rate_limiter_event_count")
STREAM = Transfer(RX.steps + 2, MIB_PRIME)
#: Issue #13's figure (bytes/s) where it binds (conftest.binding_limit), PATCHed to twice it; below the
#: floor the test would take too long: the rig is broken. The rig's path swings 3x within a run
#: (TX: 4.7 MB/s unlimited, then under 1.6 MB/s), so the doubled limit too stays at 1/BIND of it.
TARGET, FLOOR = 10_000_000, 20_000
TOLERANCE = 0.10
#: Slack for a TCP retransmission timeout: a throttled RX lets the TAP's queue overflow, the kernel
#: drops, and TCP's backed-off timer can idle the stream for a minute or two (one CI run waited 111 s
#: at 0.5 MB/s with no new MiB, most likely a kick the driver skipped on an avail_event it read as 0:
#: docs/testing.md, "not a head").
RECOVERY_S = 240


def _marks(serial: Path) -> dict[int, float]:
    return guest_marks(serial.read_text(errors="replace") if serial.exists() else "")


def _rate(marks: dict[int, float], first: int, last: int) -> float:
    """Bytes per second of guest time from the end of step ``first`` to the end of step ``last``."""
    return (last - first) * MiB / (marks[last] - marks[first])


def _patch(sock: Path, serial: Path, direction: Direction, limit: int) -> int:
    """Limit eth0's ``direction`` to ``limit`` bytes/s; the last step done before it.

    The bucket holds a quarter second's worth: after the PATCH it is full, and the stream runs
    at the path's own rate U until it is empty, which lets ``size * U / (U - limit)`` bytes
    through (at U = 2 * limit, twice the bucket); that must stay inside the skipped MiBs.
    """
    bucket = {"size": limit // 4, "refill_time": 250}
    api_ok(sock, "PATCH", "/network-interfaces/eth0",
           {"iface_id": "eth0", f"{direction.name}_rate_limiter": {"bandwidth": bucket}})
    return max(_marks(serial), default=-1)


def _eth0_metrics(path: Path) -> Counter[str]:
    """eth0's counters summed over every flush (each line holds what happened since the one before)."""
    totals: Counter[str] = Counter()
    for line in path.read_text().splitlines() if path.exists() else ():
        totals.update({k: v for k, v in json.loads(line).get("net_eth0", {}).items() if isinstance(v, int)})
    return totals


def _diagnosis(sock: Path, serial: Path, proc: subprocess.Popen[str], net: GuestNetns) -> str:
    """What a failure needs to be understood: eth0's metrics (summed over flushes), the TAP's drops, the
    VMM's stderr and log, the console."""
    if proc.poll() is None:
        api_call(sock, "PUT", "/actions", {"action_type": "FlushMetrics"})
    return (f"\neth0's metrics: {dict(_eth0_metrics(serial.parent / 'metrics.json'))}\ntap tx_dropped: {_tap_tx_dropped(net, net.taps[0].name)}"
            f"\n--- VMM stderr:\n{file_tail(serial.parent / 'vmm.err')}\n--- VMM log:\n"
            f"{file_tail(serial.parent / 'vmm.log')}\n--- console:\n{file_tail(serial)}")


def _await_step(sock: Path, serial: Path, step: int, proc: subprocess.Popen[str], net: GuestNetns,
                timeout: float) -> dict[int, float]:
    deadline = time.monotonic() + timeout
    while step not in (marks := _marks(serial)):
        fail_if_a_driver_saw_a_bad_ring(file_tail(serial))
        assert proc.poll() is None, (f"firelet-vmm ended ({proc.returncode}) before step {step}: "
                                     f"{_diagnosis(sock, serial, proc, net)}")
        assert time.monotonic() < deadline, f"no step {step} within {timeout:.0f} s: {marks}{_diagnosis(sock, serial, proc, net)}"
        time.sleep(0.2)
    fail_if_a_guest_clock_went_back(marks, f"\n--- console:\n{file_tail(serial)}")
    return marks


@pytest.mark.parametrize("direction", [RX, TX], ids=lambda d: d.name)
def test_a_limit_holds_in_the_guest_and_a_patch_changes_it_live(
        kernel, rootfs: Path, guest_netns: Callable[..., GuestNetns], tmp_path: Path, direction: Direction) -> None:
    net = guest_netns(taps=1)
    tap = net.taps[0]
    sock, serial = tmp_path / "api.sock", tmp_path / "serial.out"
    cmd = direction.guest_command(tap.host.ip)
    stderr = (tmp_path / "vmm.err").open("w")
    vmm = subprocess.Popen(net.argv([sys.executable, "-m", "firelet.cli.vmm", "--api-sock", str(sock)]),
                           env=_env(), stdout=subprocess.DEVNULL, stderr=stderr, text=True)
    try:
        with peer(net, tap, STREAM):
            _wait_sock(sock, vmm)
            api_ok(sock, "PUT", "/boot-source", {"kernel_image_path": str(kernel.vmlinux), "boot_args":
                   f"{DEFAULT_BOOT_ARGS} {tap.guest.boot_arg()} {guest_cmdline_for(cmd)}"})
            api_ok(sock, "PUT", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": str(rootfs),
                                                   "is_root_device": True, "is_read_only": True})
            api_ok(sock, "PUT", "/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": tap.name,
                                                             "guest_mac": tap.guest.mac})
            api_ok(sock, "PUT", "/serial", {"serial_out_path": str(serial)})
            api_ok(sock, "PUT", "/metrics", {"metrics_path": str(tmp_path / "metrics.json")})
            api_ok(sock, "PUT", "/logger", {"log_path": str(tmp_path / "vmm.log"), "level": "Info"})
            api_ok(sock, "PUT", "/actions", {"action_type": "InstanceStart"})
            marks = _await_step(sock, serial, BASE_STEPS - 1, vmm, net, BOOT_TIMEOUT_S)
            unlimited = _rate(marks, 0, BASE_STEPS - 1)
            limit = binding_limit(TARGET, unlimited, FLOOR, bind=2 * BIND)
            results = []
            for rate in (limit, 2 * limit):
                before = _patch(sock, serial, direction, rate)
                first = before + SKIP
                last = first + direction.measured
                assert last < direction.steps, f"the PATCH came late (after step {before})"
                marks = _await_step(sock, serial, last, vmm, net, 3 * (last - before) * MiB / rate + RECOVERY_S)
                results.append((rate, _rate(marks, first, last)))
            _wait_console(serial, rf"^{direction.name}-done$")
            # The guest powers off after that line (too soon for a FlushMetrics); the VMM writes its
            # last metrics as it exits.
            assert vmm.wait(BOOT_TIMEOUT_S) == 0, (tmp_path / "vmm.err").read_text()[-3000:]
        counters = _eth0_metrics(tmp_path / "metrics.json")
        print(f"\n{direction.name.upper()} unlimited: {unlimited / 1e6:.3f} MB/s; "
              + "; ".join(f"limited to {r / 1e6:g} MB/s: {m / 1e6:.3f} MB/s ({m / r - 1:+.1%}) over {direction.measured} MiB"
                          for r, m in results) + f"; throttled {counters[direction.throttled]} times, "
              f"woken by the timer {counters[direction.woken]}", flush=True)
        assert unlimited > 2 * limit, f"the path's own rate {unlimited / 1e6:.3f} MB/s leaves no room for a limit"
        for rate, measured in results:
            assert abs(measured - rate) <= TOLERANCE * rate, f"{measured / 1e6:.3f} MB/s against {rate / 1e6:g} MB/s"
        assert counters[direction.throttled] > 0 and counters[direction.woken] > 0
    finally:
        if vmm.poll() is None:
            vmm.kill()
            vmm.wait(10)
        stderr.close()
