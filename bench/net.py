#!/usr/bin/env python3
"""TCP throughput through virtio-net, and the VMM's CPU per GB moved, beside QEMU microvm.

    python3 bench/net.py [--runs N] [--mib M] [--json out.json]

Each VMM boots the same kernel and root image with one virtio-net interface
(virtio-mmio for all) on a TAP in a network namespace this script makes, with
documentation addresses (RFC 5737) and no route out: QEMU ``-netdev tap`` with
``vhost=off`` (packets through QEMU's own thread) and ``vhost=on`` (through the
host kernel's vhost-net worker), and firelet ``--net`` on its userspace path and
with ``vhost`` (the same kernel worker). The host end is this script, inside that
namespace: the guest sends M MiB of zeros with busybox dd | nc (guest -> host), then
reads M MiB (host -> guest). Each direction is timed on the host from the connection's accept to
its last byte (guest -> host) or to the guest's note that it read everything
(host -> guest), and the VMM's CPU time over that span (utime + stime of
every thread in /proc/PID/stat, plus the vhost-PID kernel worker for vhost) is
divided by the GB moved. That CPU includes the guest's own (the vCPU thread in
guest mode, ``guest_time``) and the host kernel's work for the VMM (KVM exits, TAP,
vhost); the VMM's user space alone (utime - guest_time) is its own code's share.

Where the local /dev/kvm cannot boot stock Linux, the script re-runs itself in the
nested rig (as ``bench/disk.py`` does); the figures are then those of a software CPU.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Interface
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import rigrun
import vhostnet
from launchers import BootInputs, Firelet, Launcher, QemuMicrovm

#: QEMU without vhost first: the reference of the ratios (rigrun.render takes the first row).
NET_LAUNCHERS: list[Launcher] = [QemuMicrovm(), QemuMicrovm(vhost=True), Firelet(), Firelet(vhost=True)]
#: The host's end of the TAP; the guest takes the other address of the /30 (RFC 5737 TEST-NET-1).
HOST_ADDRESS = IPv4Interface("192.0.2.1/30")
SINK_PORT, SOURCE_PORT, DONE_PORT = 5001, 5002, 5003
CHUNK = 1 << 18
METRICS = ("up_MBps", "down_MBps", "up_cpu_s_per_GB", "down_cpu_s_per_GB",
           "up_user_cpu_s_per_GB", "down_user_cpu_s_per_GB")
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_RIG_MIB, _KVM_MIB = 2, 256
_RESULT = re.compile(r"^NETBENCH-(UP|DOWN) (\d+)$", re.M)


def _parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/net.py", description=__doc__.split("\n\n")[0])
    rigrun.add_options(p, runs=1, boot_timeout=600.0)
    p.add_argument("--mib", type=int, default=None,
                   help=f"MiB moved each way per boot (default {_RIG_MIB} in the nested rig, "
                        f"whose software CPU moves ~0.1-0.5 MB/s, else {_KVM_MIB})")
    p.add_argument("--vhost-modules", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--vhost-note", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.mib is None:
        args.mib = _RIG_MIB if os.environ.get("FIRELET_IN_RIG") == "1" else _KVM_MIB
    if args.runs < 1 or args.mib < 1:
        p.error("--runs and --mib must be at least 1")
    return args


def cpu_seconds(pid: int) -> tuple[float, float, float]:
    """(utime, stime, guest_time) of process ``pid`` and its vhost-``pid`` kernel workers, in s.

    proc(5): after the ``(comm)`` field, utime/stime are fields 14/15 and guest_time 43.
    A vhost worker of Linux 6.1 is a kernel thread, not one of QEMU's: its time is added here.
    """
    user = system = guest = 0
    for stat in [Path(f"/proc/{pid}/stat"), *_vhost_workers(pid)]:
        try:
            rest = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        user, system, guest = user + int(rest[11]), system + int(rest[12]), guest + int(rest[40])
    return user / _CLK_TCK, system / _CLK_TCK, guest / _CLK_TCK


def _vhost_workers(pid: int) -> list[Path]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == f"vhost-{pid}":
                    found.append(entry / "stat")
            except OSError:
                continue
    return found


@dataclass
class Span:
    """One direction on the host: bytes moved, wall seconds and the VMM's CPU over them."""

    nbytes: int = 0
    seconds: float = 0.0
    user: float = 0.0  # utime: includes guest_time
    system: float = 0.0
    guest: float = 0.0


@dataclass
class HostEnd:
    """The host's end of both streams, listening in the namespace; ``serve`` runs on its own thread."""

    size: int
    timeout: float
    pid: int = 0
    up: Span = field(default_factory=Span)
    down: Span = field(default_factory=Span)
    error: str = ""
    vhost_workers: int = 0  # vhost-PID kernel threads seen as the first stream began
    listeners: dict[int, socket.socket] = field(default_factory=dict)

    def listen(self, netns: str) -> None:
        from firelet.hostnet.netns import run_in_netns

        for port in (SINK_PORT, SOURCE_PORT, DONE_PORT):  # sockets made inside stay in the namespace
            self.listeners[port] = run_in_netns(netns, lambda p=port: socket.create_server((str(HOST_ADDRESS.ip), p)))
            self.listeners[port].settimeout(self.timeout)

    def close(self) -> None:
        for sock in self.listeners.values():
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes an accept() still waiting on another thread
            except OSError:
                pass
            sock.close()

    def serve(self) -> None:
        try:
            self._serve()
        except OSError as exc:
            self.error = f"host end: {exc}"

    def _sample(self) -> tuple[float, float, float, float]:
        return (time.monotonic(), *cpu_seconds(self.pid))

    def _close_span(self, span: Span, start: tuple[float, float, float, float]) -> None:
        end = self._sample()
        span.seconds, span.user, span.system, span.guest = (e - s for e, s in zip(end, start, strict=True))

    def _serve(self) -> None:
        conn, _ = self.listeners[SINK_PORT].accept()
        with conn:
            conn.settimeout(self.timeout)
            start = self._sample()
            self.vhost_workers = len(_vhost_workers(self.pid))
            while data := conn.recv(CHUNK):
                self.up.nbytes += len(data)
            self._close_span(self.up, start)
            conn.sendall(f"{self.up.nbytes}\n".encode())
        conn, _ = self.listeners[SOURCE_PORT].accept()
        with conn:
            conn.settimeout(self.timeout)
            start = self._sample()
            zeros = memoryview(bytes(CHUNK))
            while self.down.nbytes < self.size:
                conn.sendall(zeros[:min(CHUNK, self.size - self.down.nbytes)])
                self.down.nbytes += min(CHUNK, self.size - self.down.nbytes)
        done, _ = self.listeners[DONE_PORT].accept()  # the guest has read the whole stream
        self._close_span(self.down, start)
        done.close()


def guest_command(mib: int, timeout: float) -> str:
    """Up: dd | nc to the sink, which answers the byte count; down: nc | dd, then a note on DONE_PORT."""
    host, t = HOST_ADDRESS.ip, int(timeout)
    return (f"dd if=/dev/zero bs=1048576 count={mib} 2>/dev/null | timeout {t} nc {host} {SINK_PORT} >/tmp/up; "
            f"echo NETBENCH-UP $(cat /tmp/up); "
            f"timeout {t} nc {host} {SOURCE_PORT} </dev/null | wc -c >/tmp/down; "
            f"echo done | timeout 30 nc {host} {DONE_PORT} >/dev/null; echo NETBENCH-DOWN $(cat /tmp/down)")


def make_netns() -> tuple[str, str]:
    """A new namespace with tap0 up at HOST_ADDRESS: (namespace, TAP name)."""
    from firelet.hostnet import links
    from firelet.hostnet.netns import create_netns

    name = f"flnetbench{os.getpid() % 100000}"
    create_netns(name)
    try:
        links.set_up("lo", name)
        links.create_tap("tap0", netns=name)
        links.add_address("tap0", HOST_ADDRESS, name)
        links.set_up("tap0", name)
    except BaseException:
        remove_netns(name)
        raise
    return name, "tap0"


def remove_netns(name: str) -> None:
    from firelet.hostnet import links
    from firelet.hostnet.netns import remove_netns as remove

    links.delete_link("tap0", name)
    remove(name)


def run_once(launcher: Launcher, boot: BootInputs, netns: str, args: argparse.Namespace) -> dict[str, Any]:
    """One boot with the host end serving; both directions' figures, or an error and the console's tail."""
    from firelet.hostnet.netns import netns_path

    host = HostEnd(size=args.mib << 20, timeout=args.boot_timeout)
    host.listen(netns)
    try:
        proc = subprocess.Popen(["nsenter", f"--net={netns_path(netns)}", *launcher.argv(boot)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        host.pid = proc.pid  # nsenter execs the VMM in place: the same process
        server = threading.Thread(target=host.serve, name="netbench-host", daemon=True)
        server.start()
        try:
            out, _ = proc.communicate(timeout=args.boot_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        server.join(10)
    finally:
        host.close()
    console = out.decode("utf-8", "replace").replace("\r", "")
    said = {kind: int(n) for kind, n in _RESULT.findall(console)}
    size = args.mib << 20
    if host.error or said.get("UP") != size or said.get("DOWN") != size or server.is_alive():
        why = host.error or f"guest saw up={said.get('UP')} down={said.get('DOWN')} of {size} bytes"
        return {"error": why, "console_tail": console.strip().splitlines()[-8:]}
    result: dict[str, Any] = {"vhost_workers": host.vhost_workers}
    for name, span in (("up", host.up), ("down", host.down)):
        gb = span.nbytes / 1e9
        result[f"{name}_MBps"] = span.nbytes / 1e6 / span.seconds
        result[f"{name}_cpu_s_per_GB"] = (span.user + span.system) / gb
        result[f"{name}_user_cpu_s_per_GB"] = (span.user - span.guest) / gb
        result[f"{name}_s"] = span.seconds
        result[f"{name}_cpu_s"] = {"user": span.user, "system": span.system, "guest": span.guest}
    return result


def measure(args: argparse.Namespace, vmlinux: Path, rootfs_template: Path) -> dict[str, Any]:
    from firelet.devtools.images import guest_cmdline_for
    from firelet.hostnet import GuestSettings

    vhost_missing = vhostnet.load(args.vhost_modules, args.vhost_note)
    guest = GuestSettings.for_tap(HOST_ADDRESS)
    # quiet: the kernel's boot log stays off the serial console, which costs an exit per byte in the rig.
    cmdline = (f"{rigrun.BASE_CMDLINE} quiet {guest.boot_arg()} "
               f"{guest_cmdline_for(guest_command(args.mib, args.boot_timeout / 3))}")
    netns, tap = make_netns()
    try:
        def one_run(launcher: Launcher, _tmp: Path, rootfs: Path) -> dict[str, Any]:
            boot = BootInputs(vmlinux=vmlinux, rootfs=rootfs, cmdline=cmdline, mem_mib=256, net=(tap, guest.mac))
            return run_once(launcher, boot, netns, args)

        results = rigrun.measure_each(args.runs, rootfs_template, one_run, METRICS, NET_LAUNCHERS)
    finally:
        remove_netns(netns)
    for launcher in NET_LAUNCHERS:
        if isinstance(launcher, QemuMicrovm | Firelet) and launcher.vhost and vhost_missing:
            results[launcher.name] = {"unavailable": vhost_missing}
    return results


def _num(value: float) -> str:
    """Three significant digits without exponents (the rig's figures span 0.1 to 10^4)."""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:#.3g}"


def _cell(s: dict[str, float] | None, refs: list[dict[str, float] | None]) -> str:
    if s is None:
        return "-"
    text = _num(s["median"])
    if s["min"] != s["max"]:
        text += f" [{_num(s['min'])}-{_num(s['max'])}]"
    ratios = [f"{s['median'] / ref['median']:.2f}x" if ref and ref["median"] else "-" for ref in refs]
    return f"{text} ({' / '.join(ratios)})"


def render(report: dict[str, Any]) -> str:
    results = report["results"]
    refs = [results.get(launcher.name, {}) for launcher in NET_LAUNCHERS[:2]]

    def cells(r: dict[str, Any], _ref: dict[str, Any]) -> list[str]:
        return [_cell(r[m], [ref.get(m) for ref in refs]) for m in METRICS]

    return rigrun.render(
        report, f"{report['runs']} boot(s) per VMM; medians [min-max] (ratio vs QEMU vhost=off / vhost=on); "
                "CPU = utime + stime of the VMM's threads and vhost worker per GB moved; "
                "user space = utime - guest_time",
        ["guest→host MB/s", "host→guest MB/s", "CPU s/GB guest→host", "CPU s/GB host→guest",
         "VMM user space s/GB guest→host", "VMM user space s/GB host→guest"], cells)


def main(argv: list[str]) -> int:
    args = _parse_args(argv)
    here, why = rigrun.kvm_here()
    if not here:
        modules, note = vhostnet.fetch_modules()
        extra = ("--vhost-note", note) if modules is None else ("--vhost-modules", str(modules))
        return rigrun.rerun_in_rig(__file__, argv, args, why, boots=args.runs * len(NET_LAUNCHERS), extra=extra)
    if os.geteuid() != 0:
        print("bench: error: bench/net.py makes a network namespace and a TAP: run it as root", file=sys.stderr)
        return 1
    vmlinux, rootfs = rigrun.guest_images(args)
    guest = (f"{vmlinux.name} + ext4 root, 256 MiB, 1 vCPU, kernel log off, one virtio-net interface on a TAP; "
             f"{args.mib} MiB of TCP each way (busybox dd + nc in the guest, Python on the host)")
    return rigrun.publish(args, why, guest, measure(args, vmlinux, rootfs), render)


if __name__ == "__main__":
    rigrun.run(main)
