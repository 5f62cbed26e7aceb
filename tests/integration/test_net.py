"""virtio-net end to end: guests exchange checksummed TCP with a program in the test's own namespace.

Every VMM runs inside a namespace the test made (``GuestNetns.argv``), so it opens its
TAPs there, as Firecracker's does under its jailer; the host end (net_peer.py) runs in
the same namespace and nothing leaves it. The guest takes its address from the
kernel's ``ip=`` argument and runs its side with busybox (dd, tee, md5sum, nc).
The sizes and times are printed (pytest -s) for the report; no test asserts a time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from firelet.builder.boot import DEFAULT_BOOT_ARGS
from firelet.devtools.cache import repo_root
from firelet.devtools.images import guest_cmdline_for
from firelet.hostnet.netns import rtnl

import netns
from conftest import BOOT_TIMEOUT_S, api_ok, fail_if_a_driver_saw_a_bad_ring, run_reported
from netns import GuestNetns, GuestTap

guest_netns = netns.guest_netns  # the fixture: pytest finds it in this module under its name

PEER = Path(__file__).with_name("net_peer.py")

@dataclasses.dataclass(frozen=True)
class Transfer:
    """One exchange's size each way: ``blocks`` copies of one random block of ``block`` bytes (a prime,
    so no TCP segment or page boundary lines up with it)."""

    blocks: int
    block: int

    @property
    def size(self) -> int:
        return self.blocks * self.block

    @property
    def timeout_s(self) -> int:
        """A bound on each direction inside the guest: a stall ends with the console saying so, while
        the slowest rig seen (~0.1 MB/s) still finishes."""
        return TRANSFER_TIMEOUT_S + self.size // 100_000


MIB_PRIME, QUARTER_MIB_PRIME = 1048583, 262147
#: A bound on each transfer inside the guest beyond its size's share, so a stalled one ends with the
#: console telling why (Transfer.timeout_s).
TRANSFER_TIMEOUT_S = int(os.environ.get("FIRELET_TEST_NET_TIMEOUT", "120"))
#: Issue #13's 100 MB each way (96 blocks of 1 MiB + 7 bytes), on the default (userspace) data path of
#: ``firelet run``: 150-190 s up and 20-35 s down in the rig on 2026-12-03 (0.5-0.7 / 3-5 MB/s).
HUNDRED_MB = Transfer(int(os.environ.get("FIRELET_TEST_NET_BLOCKS", "96")), MIB_PRIME)
#: The vhost-net guest's main exchange: 8 MiB each way, many ring wraps and interrupt rounds.
BIG = Transfer(8, MIB_PRIME)
#: The other exchanges (eth1, the API and config-file guests): 256 KiB each way.
SMALL = Transfer(1, QUARTER_MIB_PRIME)
#: The guest's side: ``x LABEL HOST BLOCKS BLOCK TIMEOUT`` pings the host, sends BLOCKS copies of one random
#: BLOCK-byte block to the sink (hashing them on the way through a FIFO: busybox sh has no process
#: substitution), prints both checksums, then hashes what the source sends; each way within TIMEOUT s.
GUEST_EXCHANGE = (
    "x() { ping -c 1 -W 10 $2 | grep -q ' 0% packet loss' && echo \"$1-ping ok\"; "
    "dd if=/dev/urandom of=/tmp/b bs=$4 count=1 iflag=fullblock 2>/dev/null; rm -f /tmp/f; mkfifo /tmp/f; "
    "md5sum </tmp/f >/tmp/s & i=0; while [ $i -lt $3 ]; do cat /tmp/b; i=$((i+1)); done | tee /tmp/f "
    "| timeout $5 nc $2 5001 >/tmp/r; wait; echo \"$1-up $(cut -d' ' -f1 /tmp/s) $(cat /tmp/r)\"; "
    "echo \"$1-down $(timeout $5 nc $2 5002 </dev/null | md5sum | cut -d' ' -f1)\"; }"
)


def exchange_cmd(label: str, host: object, transfer: Transfer) -> str:
    """The guest's command for one exchange with the peer at ``host``."""
    return f"x {label} {host} {transfer.blocks} {transfer.block} {transfer.timeout_s}"


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(repo_root()) + os.pathsep + os.environ.get("PYTHONPATH", ""))


@contextmanager
def peer(net: GuestNetns, tap: GuestTap, transfer: Transfer) -> Iterator[subprocess.Popen[str]]:
    """net_peer.py serving on ``tap``'s host address inside the namespace; killed afterwards."""
    proc = subprocess.Popen(net.argv([sys.executable, str(PEER), "serve", str(tap.host.ip), str(transfer.size),
                                      str(transfer.block)]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


def _peer_lines(proc: subprocess.Popen[str]) -> list[list[str]]:
    """What the peer reported once killed: ``[kind, md5, bytes, seconds]`` per connection."""
    proc.kill()
    out, err = proc.communicate(timeout=10)
    return [line.split() for line in out.splitlines() if line.startswith(("sink ", "source "))] or [["none", err]]


def check_exchange(console: str, label: str, reports: list[list[str]], transfer: Transfer) -> tuple[float, float]:
    """Both ends agree on both directions' bytes and checksums; the peer's (up, down) seconds."""
    text = console.replace("\r", "")
    fail_if_a_driver_saw_a_bad_ring(text)
    up = re.search(rf"^{label}-up ([0-9a-f]{{32}}) ([0-9a-f]{{32}}) (\d+)\n", text, re.M)
    down = re.search(rf"^{label}-down ([0-9a-f]{{32}})$", text, re.M)
    assert up and down, f"{label}: no checksums on the console:\n{text[-3000:]}\npeer: {reports}"
    sink = next(r for r in reports if r[0] == "sink")
    source = next(r for r in reports if r[0] == "source")
    size = transfer.size
    assert up.group(1) == up.group(2) == sink[1] and int(up.group(3)) == int(sink[2]) == size, (label, up, sink)
    assert down.group(1) == source[1] and int(source[2]) == size, (label, down, source)
    return float(sink[3]), float(source[3])


def _report(what: str, transfer: Transfer, seconds: tuple[float, float]) -> None:
    mb = transfer.size / 1e6
    print(f"\n{what}: {mb:.1f} MB guest->host in {seconds[0]:.1f} s ({mb / max(seconds[0], 1e-3):.1f} MB/s), "
          f"host->guest in {seconds[1]:.1f} s ({mb / max(seconds[1], 1e-3):.1f} MB/s)", flush=True)


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return run_reported(argv, timeout=timeout, env=_env())


def test_firelet_run_with_two_interfaces_moves_checksummed_tcp_each_way(kernel, rootfs: Path,
                                                               guest_netns: Callable[..., GuestNetns]) -> None:
    """(a) and (b): ``firelet run --net`` twice; 100 MB each way on eth0, a small exchange on eth1."""
    net = guest_netns(taps=2)
    first, second = net.taps
    eth1 = dataclasses.replace(second.guest, iface="eth1")
    cmd = "; ".join([
        GUEST_EXCHANGE, *eth1.commands()[:2],  # the kernel's ip= sets up one interface: eth1 by hand
        "cat /sys/class/net/eth0/address /sys/class/net/eth1/address",
        exchange_cmd("eth0", first.host.ip, HUNDRED_MB), exchange_cmd("eth1", second.host.ip, SMALL)])
    limit = BOOT_TIMEOUT_S + 2 * (HUNDRED_MB.timeout_s + SMALL.timeout_s)
    with peer(net, first, HUNDRED_MB) as big, peer(net, second, SMALL) as small:
        started = time.monotonic()
        result = _run(net.argv([
            sys.executable, "-m", "firelet", "run", "--kernel", str(kernel.vmlinux), "--rootfs", str(rootfs), "--ro",
            "--mem", "256", "--cmdline", f"{DEFAULT_BOOT_ARGS} {first.guest.boot_arg()}", "--cmd", cmd,
            "--net", f"tap={first.name},mac={first.guest.mac}", "--net", f"id=second,tap={second.name},mac={second.guest.mac}",
            "--timeout", str(limit)]), limit + 30)
        elapsed = time.monotonic() - started
        reports = (_peer_lines(big), _peer_lines(small))
    assert result.returncode == 0, f"{result.stderr[-3000:]}\n{result.stdout[-3000:]}"
    console = result.stdout.replace("\r", "")
    assert f"{first.guest.mac.lower()}\n{second.guest.mac.lower()}\n" in console  # the MACs the VMM gave them
    _report("firelet run, eth0", HUNDRED_MB, check_exchange(console, "eth0", reports[0], HUNDRED_MB))
    _report("firelet run, eth1", SMALL, check_exchange(console, "eth1", reports[1], SMALL))
    print(f"the whole run (boot, both exchanges, exit) took {elapsed:.1f} s", flush=True)


def _wait_console(path: Path, pattern: str, timeout: float = BOOT_TIMEOUT_S) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace").replace("\r", "") if path.exists() else ""
        found = re.search(pattern, text, re.M)
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"no {pattern!r} on the console within {timeout} s:\n{text[-3000:]}")


def _wait_sock(sock: Path, proc: subprocess.Popen[Any]) -> None:
    deadline = time.monotonic() + 60
    while not sock.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "firelet-vmm never made its API socket"
        time.sleep(0.05)


def _disk_reads(path: Path) -> dict[int, str]:
    """The guest's finished reads of its data drive so far: index -> md5."""
    text = path.read_text(errors="replace").replace("\r", "")
    return {int(n): md5 for n, md5 in re.findall(r"^disk (\d+) ([0-9a-f]{32})$", text, re.M)}


def _tap_tx_dropped(net: GuestNetns, name: str) -> int:
    """Frames the kernel dropped on their way to the TAP's reader (the VMM): its tx_dropped."""
    with rtnl(net.name) as ipr:
        [link] = ipr.get_links(ipr.link_lookup(ifname=name)[0])
        return int(link.get_attr("IFLA_STATS64")["tx_dropped"])


def test_through_the_api_a_flood_the_guest_never_reads_leaves_the_api_and_disk_serving(
        kernel, rootfs: Path, guest_netns: Callable[..., GuestNetns], tmp_path: Path) -> None:
    """(c) through firelet-vmm's API, and (d): with its link down the guest never takes a frame; the host floods it."""
    net = guest_netns(taps=1)
    tap = net.taps[0]
    data = tmp_path / "data.img"
    data.write_bytes(os.urandom(8 << 20))
    digest = hashlib.md5(data.read_bytes()).hexdigest()
    # After the exchange the guest stops reading its RX queue for good, then reads its data drive
    # past the page cache once a second (the test's flood starts meanwhile).
    cmd = "; ".join([GUEST_EXCHANGE, exchange_cmd("eth0", tap.host.ip, SMALL), "ip link set eth0 down",
                     "echo rx-stopped", "i=0; while [ $i -lt 600 ]; do echo \"disk $i $(dd if=/dev/vdb bs=1M "
                     "iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)\"; i=$((i+1)); sleep 1; done"])
    sock, serial, metrics = tmp_path / "api.sock", tmp_path / "serial.out", tmp_path / "metrics.json"
    stderr = (tmp_path / "vmm.err").open("w")
    vmm = subprocess.Popen(net.argv([sys.executable, "-m", "firelet.cli.vmm", "--api-sock", str(sock)]),
                           env=_env(), stdout=subprocess.DEVNULL, stderr=stderr, text=True)
    flooder = None
    try:
        with peer(net, tap, SMALL) as server:
            _wait_sock(sock, vmm)
            api_ok(sock, "PUT", "/boot-source", {"kernel_image_path": str(kernel.vmlinux), "boot_args":
                   f"{DEFAULT_BOOT_ARGS} {tap.guest.boot_arg()} {guest_cmdline_for(cmd)}"})
            api_ok(sock, "PUT", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": str(rootfs),
                                                   "is_root_device": True, "is_read_only": True})
            api_ok(sock, "PUT", "/drives/data", {"drive_id": "data", "path_on_host": str(data),
                                                 "is_root_device": False, "is_read_only": True})
            api_ok(sock, "PUT", "/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": tap.name,
                                                             "guest_mac": tap.guest.mac})
            api_ok(sock, "PUT", "/serial", {"serial_out_path": str(serial)})
            api_ok(sock, "PUT", "/metrics", {"metrics_path": str(metrics)})
            api_ok(sock, "PUT", "/actions", {"action_type": "InstanceStart"})
            _wait_console(serial, r"^eth0-down [0-9a-f]{32}$")
            _report("API", SMALL, check_exchange(serial.read_text(errors="replace"), "eth0", _peer_lines(server), SMALL))
        _wait_console(serial, r"^rx-stopped$")
        dropped_before = _tap_tx_dropped(net, tap.name)
        flooder = subprocess.Popen(net.argv([sys.executable, str(PEER), "flood", tap.name, str(tap.host.ip),
                                             str(tap.guest.address.ip), tap.guest.mac]), env=_env(),
                                   stdout=subprocess.PIPE, text=True)
        assert flooder.stdout is not None and flooder.stdout.readline() == "flooding\n"
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while _tap_tx_dropped(net, tap.name) <= dropped_before:  # the VMM stopped reading: the kernel drops
            assert time.monotonic() < deadline, "the flood never backed up into the TAP"
            time.sleep(0.2)
        # Under the flood: the API answers (reads and a live PATCH), the disk serves the right bytes.
        last = max(_disk_reads(serial), default=-1)
        for _ in range(3):
            assert api_ok(sock, "GET", "/")["state"] == "Running"
        limiter = {"bandwidth": {"size": 10_000_000, "refill_time": 1000}}
        api_ok(sock, "PATCH", "/network-interfaces/eth0", {"iface_id": "eth0", "rx_rate_limiter": limiter})
        exported = api_ok(sock, "GET", "/vm/config")["network-interfaces"][0]
        assert exported["rx_rate_limiter"]["bandwidth"]["size"] == 10_000_000
        _wait_console(serial, rf"^disk {last + 2} [0-9a-f]{{32}}$")  # read last+2 began once the flood backed up
        reads = _disk_reads(serial)
        assert [reads[i] for i in (last + 1, last + 2)] == [digest, digest], serial.read_text()[-2000:]
        assert _tap_tx_dropped(net, tap.name) > dropped_before
        api_ok(sock, "PUT", "/actions", {"action_type": "FlushMetrics"})
        flooder.kill()
        flooder.wait(10)
        lines = [json.loads(line) for line in metrics.read_text().splitlines()]
        counters = ("no_rx_avail_buffer", "rx_bytes_count", "rx_packets_count", "tx_bytes_count", "tx_packets_count",
                    "tx_queue_event_count", "no_tx_avail_buffer", "tx_malformed_frames", "tap_write_fails")
        net_metrics = {key: sum(line["net"][key] for line in lines) for key in counters}
        print(f"\nflood: tap0 tx_dropped {_tap_tx_dropped(net, tap.name) - dropped_before}, VMM metrics {net_metrics}, "
              f"net_eth0 present: {'net_eth0' in lines[-1]}", flush=True)
        assert net_metrics["no_rx_avail_buffer"] > 0  # the VMM saw the guest's queue empty and stopped reading
        assert net_metrics["rx_bytes_count"] > 0
        api_ok(sock, "PUT", "/actions", {"action_type": "SendCtrlAltDel"})
        assert vmm.wait(BOOT_TIMEOUT_S) == 0, (tmp_path / "vmm.err").read_text()[-3000:]
    finally:
        for proc in (flooder, vmm):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
        stderr.close()


def _config_file(tmp_path: Path, kernel: Any, rootfs: Path, boot_args: str,
                 interfaces: list[dict[str, Any]]) -> tuple[Path, Path]:
    """A Firecracker config file booting ``kernel`` on the read-only ``rootfs`` with ``interfaces``;
    (its path, the serial console's file)."""
    serial = tmp_path / "serial.out"
    config = tmp_path / "vm.json"
    config.write_text(json.dumps({
        "boot-source": {"kernel_image_path": str(kernel.vmlinux), "boot_args": f"{DEFAULT_BOOT_ARGS} {boot_args}"},
        "drives": [{"drive_id": "rootfs", "path_on_host": str(rootfs), "is_root_device": True, "is_read_only": True}],
        "network-interfaces": interfaces,
        "serial": {"serial_out_path": str(serial)},
    }))
    return config, serial


def test_a_config_file_brings_the_interface_up(kernel, rootfs: Path, guest_netns: Callable[..., GuestNetns],
                                               tmp_path: Path) -> None:
    """(c) through ``firelet-vmm --config-file``: the same exchange, small."""
    net = guest_netns(taps=1)
    tap = net.taps[0]
    cmd = "; ".join([GUEST_EXCHANGE, exchange_cmd("eth0", tap.host.ip, SMALL)])
    config, serial = _config_file(tmp_path, kernel, rootfs, f"{tap.guest.boot_arg()} {guest_cmdline_for(cmd)}", [
        {"iface_id": "eth0", "host_dev_name": tap.name, "guest_mac": tap.guest.mac,
         "tx_rate_limiter": {"bandwidth": {"size": 0, "refill_time": 0}}}])
    with peer(net, tap, SMALL) as server:
        try:
            result = _run(net.argv([sys.executable, "-m", "firelet.cli.vmm", "--no-api", "--config-file",
                                    str(config)]), 2 * BOOT_TIMEOUT_S)
        finally:
            reports = _peer_lines(server)
            console = serial.read_text(errors="replace") if serial.exists() else ""
            print(f"\nconfig file run, the serial console's tail:\n{console[-1500:]}\npeer: {reports}", flush=True)
    assert result.returncode == 0, f"{result.stderr[-3000:]}\n{console[-3000:]}"
    _report("config file", SMALL, check_exchange(console, "eth0", reports, SMALL))


def test_vhost_net_moves_checksummed_tcp_beside_a_userspace_interface(
        kernel, rootfs: Path, guest_netns: Callable[..., GuestNetns], tmp_path: Path) -> None:
    """The opt-in vhost-net data path (``"vhost": true``) through ``firelet-vmm --config-file``, seccomp on:
    the big exchange on eth0 (vhost), a small one on eth1 (userspace) in the same guest."""
    if not os.path.exists("/dev/vhost-net"):
        raise AssertionError("/dev/vhost-net is missing: the rig loads vhost_net (firelet.devtools.nested.modules)")
    net = guest_netns(taps=2)
    first, second = net.taps
    eth1 = dataclasses.replace(second.guest, iface="eth1")
    cmd = "; ".join([GUEST_EXCHANGE, *eth1.commands()[:2], exchange_cmd("eth0", first.host.ip, BIG),
                     exchange_cmd("eth1", second.host.ip, SMALL)])
    config, serial = _config_file(tmp_path, kernel, rootfs, f"{first.guest.boot_arg()} {guest_cmdline_for(cmd)}", [
        {"iface_id": "eth0", "host_dev_name": first.name, "guest_mac": first.guest.mac, "vhost": True},
        {"iface_id": "eth1", "host_dev_name": second.name, "guest_mac": second.guest.mac}])
    with peer(net, first, BIG) as big, peer(net, second, SMALL) as small:
        try:
            result = _run(net.argv([sys.executable, "-m", "firelet.cli.vmm", "--no-api", "--config-file",
                                    str(config)]), 2 * BOOT_TIMEOUT_S + 2 * (BIG.timeout_s + SMALL.timeout_s))
        finally:
            reports = (_peer_lines(big), _peer_lines(small))
            console = serial.read_text(errors="replace") if serial.exists() else ""
            print(f"\nvhost run, the serial console's tail:\n{console[-1500:]}\npeer: {reports}", flush=True)
    assert result.returncode == 0, f"{result.stderr[-3000:]}\n{console[-3000:]}"
    _report("vhost-net, eth0", BIG, check_exchange(console, "eth0", reports[0], BIG))
    _report("userspace beside it, eth1", SMALL, check_exchange(console, "eth1", reports[1], SMALL))
