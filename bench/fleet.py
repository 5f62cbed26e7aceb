#!/usr/bin/env python3
"""Many microVMs launched at once: warm launcher, cold firelet-vmm and QEMU microvm, in one run (#15).

    python3 bench/fleet.py [--count N] [--mem-mib M] [--kinds qemu,warm,cold] [--json OUT] [--plot PNG]

For each kind, N microVMs (1 vCPU, M MiB each, the same kernel, one shared read-only
root image and command line) are started at once:

- ``qemu-microvm``: N ``qemu-system-x86_64 -M microvm -enable-kvm`` (bench/launchers.py's yardstick);
- ``firelet-warm``: N ``launch`` requests to one warm launcher (firelet/launcher), each child
  running firelet-vmm's ``--api-sock S --config-file C --id ID --log-path L --metrics-path M``;
- ``firelet-cold``: N ``firelet-vmm`` processes with the same arguments.

Each guest prints ``FLEET-ANSWER`` (its command's answer) and then waits, polling a
small shared read-only "signal" drive. Measured: the wall time from the first launch
request until all N consoles show the answer, each VM's time to its answer, then (all
idle) each VMM's USS (``/proc/PID/smaps_rollup`` Private_Clean + Private_Dirty) and RSS,
and the private part of its guest-RAM mapping (the pages the guest touched, from
``/proc/PID/smaps``), so ``USS - guest RAM`` is the VMM's own cost. Then the bench writes
``FLEET-STOP`` into the signal drive: each guest's command ends, its init reboots, its VMM
exits; a VM ended cleanly when its VMM exited 0 after the guest's ``FIRELET-EXIT status=0``.

Runs in the nested rig where the local /dev/kvm cannot boot Linux (as bench/boot.py).
``--plot`` draws a PNG from the results (needs matplotlib: the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from firelet.launcher import procinfo

import rigrun
from launchers import BootInputs, QemuMicrovm, firelet_vmm_command

REPO = Path(__file__).resolve().parent.parent
KINDS = ("qemu", "warm", "cold")
NAMES = {"qemu": "qemu-microvm", "warm": "firelet-warm", "cold": "firelet-cold"}
ANSWER = "FLEET-ANSWER"
STOP = b"FLEET-STOP\n"
SIGNAL_BYTES = 4096  # the signal drive: 8 sectors, how the guest tells it from the root
_ANSWER_RE = re.compile(ANSWER + r" uptime=([0-9.]+)")
_SMAPS_HEADER = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ")
#: The guest's command: answer, find the 8-sector drive, poll it (O_DIRECT: past the page cache) until STOP.
GUEST_CMD = (f'echo "{ANSWER} uptime=$(cut -d" " -f1 /proc/uptime)"; '
             "for d in /sys/block/vd*; do [ \"$(cat $d/size)\" = 8 ] && s=/dev/${d##*/}; done; "
             f"until dd if=$s bs=512 count=1 iflag=direct 2>/dev/null | grep -q {STOP.decode().strip()}; "
             "do sleep 3; done")


def _parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/fleet.py", description=__doc__.split("\n\n")[0])
    rigrun.add_options(p, runs=1, boot_timeout=600.0)
    p.add_argument("--count", type=int, default=10, help="microVMs launched at once, per kind (default 10)")
    p.add_argument("--mem-mib", type=int, default=128, help="guest RAM of each (default 128)")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"which to run, in order (default {','.join(KINDS)})")
    p.add_argument("--settle", type=float, default=3.0, metavar="S",
                   help="after the last answer, before reading memory (default 3)")
    p.add_argument("--end-timeout", type=float, default=180.0, metavar="S",
                   help="after FLEET-STOP, for every VMM to exit (default 180)")
    p.add_argument("--plot", type=Path, default=None, metavar="PNG", help="also draw the results (matplotlib)")
    args = p.parse_args(argv)
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if args.runs != 1:
        p.error("--runs: one batch per kind (the N VMs of a batch are the samples)")
    if args.count < 1 or args.mem_mib < 16 or not args.kinds or set(args.kinds) - set(KINDS):
        p.error(f"--count at least 1, --mem-mib at least 16, --kinds among {','.join(KINDS)}")
    return args


# -- memory -----------------------------------------------------------------------------------
def guest_ram_kib(pid: int, guest_kib: int) -> tuple[int, int]:
    """(private KiB, RSS KiB) of the VMM's guest-RAM mapping: the smallest anonymous mapping at
    least as large as the guest's RAM (/proc/PID/smaps); (0, 0) if there is none."""
    best: tuple[int, int, int] | None = None  # (size, private, rss)
    size = private = rss = 0
    anonymous = False

    def close() -> None:
        nonlocal best
        if anonymous and size >= guest_kib and (best is None or size < best[0]):
            best = (size, private, rss)

    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return 0, 0
    for line in text.splitlines():
        if _SMAPS_HEADER.match(line):  # a new mapping: "start-end perms offset dev inode [path]"
            close()
            fields = line.split()
            anonymous, size, private, rss = len(fields) < 6, 0, 0, 0
            continue
        head, _, rest = line.partition(":")
        value = rest.split()
        if not value or not value[0].isdigit():
            continue
        if head == "Size":
            size = int(value[0])
        elif head in ("Private_Clean", "Private_Dirty"):
            private += int(value[0])
        elif head == "Rss":
            rss = int(value[0])
    close()
    return (best[1], best[2]) if best else (0, 0)


def mem_available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return 0.0


def mem_total_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024
    return 0.0


# -- one batch ------------------------------------------------------------------------------
@dataclass
class Vm:
    """One microVM of a batch: its process, its console file and what was seen of it."""

    id: str
    console: Path
    pid: int = 0
    proc: subprocess.Popen[bytes] | None = None
    text: str = ""
    offset: int = 0
    answer_s: float | None = None
    record: dict[str, Any] = field(default_factory=dict)

    def read(self) -> str:
        try:
            with self.console.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return self.text
        self.offset += len(data)
        self.text += data.decode("utf-8", "replace").replace("\r", "")
        return self.text

    def tail(self) -> list[str]:
        return self.text.strip().splitlines()[-6:]


#: How often a batch that is still booting says how far it got.
PROGRESS_EVERY_S = 30.0


def _ended(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True


def _vmm_argv(vm: Vm, config: Path, work: Path) -> list[str]:
    """firelet-vmm's arguments, the same warm and cold (what `firelet fleet up` gives a member)."""
    return ["--api-sock", str(work / f"{vm.id}.sock"), "--config-file", str(config), "--id", vm.id,
            "--log-path", str(work / f"{vm.id}.log"), "--metrics-path", str(work / f"{vm.id}.metrics")]


def _qemu_argv(boot: BootInputs) -> list[str]:
    argv = QemuMicrovm().argv(boot)
    # Both drives read-only, so N QEMUs share one file (QEMU takes a shared lock then).
    return [f"{a},readonly=on" if i and argv[i - 1] == "-drive" else a for i, a in enumerate(argv)]


def run_batch(kind: str, args: argparse.Namespace, boot: BootInputs, config: Path, work: Path) -> dict[str, Any]:
    """N VMs of one kind at once: the answer times, memory once idle, then the clean end."""
    from firelet.launcher.client import Launcher

    signal_drive = boot.drives[0]
    signal_drive.write_bytes(bytes(SIGNAL_BYTES))
    vms = [Vm(f"{kind[0]}{i}", work / f"{kind[0]}{i}.console") for i in range(1, args.count + 1)]
    for vm in vms:
        vm.console.touch()
    launcher = Launcher.start(work / "launcher.sock", log_path=work / "launcher.log") if kind == "warm" else None
    result: dict[str, Any] = {"count": args.count}
    try:
        avail_before = mem_available_mib()
        t0 = time.monotonic()
        for vm in vms:
            if launcher is not None:
                vm.pid = launcher.launch(vm.id, _vmm_argv(vm, config, work), stdout=str(vm.console),
                                         stderr=str(work / f"{vm.id}.stderr"), cwd=str(work))
                continue
            argv = _qemu_argv(boot) if kind == "qemu" else [*firelet_vmm_command(), *_vmm_argv(vm, config, work)]
            with vm.console.open("wb") as out:
                vm.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                           cwd=work)
            vm.pid = vm.proc.pid
        result["launch_requests_s"] = time.monotonic() - t0
        _wait_answers(vms, t0, args.boot_timeout)
        answered = [vm for vm in vms if vm.answer_s is not None]
        result["answered"] = len(answered)
        result["all_answered_s"] = max(vm.answer_s for vm in answered) if len(answered) == len(vms) else None
        time.sleep(args.settle)
        guest_kib = boot.mem_mib * 1024
        for vm in vms:
            rss, uss = procinfo.memory_kib(vm.pid)
            guest_private, guest_rss = guest_ram_kib(vm.pid, guest_kib)
            cpu_s, _age = procinfo.stat_times(vm.pid)
            vm.record.update(rss_mib=rss / 1024, uss_mib=uss / 1024, guest_private_mib=guest_private / 1024,
                             guest_rss_mib=guest_rss / 1024, own_uss_mib=(uss - guest_private) / 1024,
                             cpu_s=cpu_s)
        result["mem_available_mib"] = {"before": avail_before, "idle": mem_available_mib()}
        if launcher is not None and launcher.process is not None:
            result["launcher_uss_mib"] = procinfo.memory_kib(launcher.process.pid)[1] / 1024
        result["end_s"] = _end(vms, signal_drive, launcher, args.end_timeout)
    finally:
        for vm in vms:
            if vm.proc is not None and vm.proc.poll() is None:
                vm.proc.kill()
                vm.proc.wait()
        if launcher is not None:
            launcher.close()  # stops any child still running, then the launcher
    result["clean"] = sum(1 for vm in vms if vm.record.get("clean"))
    result["runs"] = [{"id": vm.id, **vm.record} for vm in vms]
    good = [vm.record for vm in vms if "error" not in vm.record]
    for key in ("answer_s", "guest_uptime_s", "rss_mib", "uss_mib", "guest_private_mib", "own_uss_mib", "cpu_s"):
        result[key] = rigrun.stats([float(r[key]) for r in good if r.get(key) is not None])
    return result


def _wait_answers(vms: list[Vm], t0: float, timeout: float) -> None:
    """Until every console shows the answer (or its VMM ended, or the time is up)."""
    deadline = t0 + timeout
    waiting = list(vms)
    next_progress = t0 + PROGRESS_EVERY_S
    while waiting and time.monotonic() < deadline:
        if time.monotonic() >= next_progress:
            next_progress += PROGRESS_EVERY_S
            _progress(vms, waiting, t0)
        for vm in list(waiting):
            found = _ANSWER_RE.search(vm.read())
            if found is not None:
                vm.answer_s = time.monotonic() - t0
                vm.record.update(answer_s=vm.answer_s, guest_uptime_s=float(found.group(1)))
                waiting.remove(vm)
            elif _ended(vm.pid):
                vm.record.update(error="its VMM ended before the answer", console_tail=vm.tail())
                waiting.remove(vm)
        time.sleep(0.1)
    for vm in waiting:
        vm.read()
        vm.record.update(error=f"no answer within {timeout:g} s", console_tail=vm.tail())
    print(f"# answered {sum(vm.answer_s is not None for vm in vms)}/{len(vms)} after "
          f"{time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)


def _progress(vms: list[Vm], waiting: list[Vm], t0: float) -> None:
    """One line on stderr: how many answered, the VMMs' CPU seconds so far and the host's load."""
    cpu = " ".join(f"{procinfo.stat_times(vm.pid)[0]:.0f}" for vm in vms)
    last = waiting[0].tail()[-1:] if waiting and waiting[0].read() else []
    print(f"# {time.monotonic() - t0:.0f} s: answered {len(vms) - len(waiting)}/{len(vms)}; VMM CPU s {cpu}; "
          f"load {os.getloadavg()[0]:.1f}; {waiting[0].id if waiting else ''}: {' '.join(last)[:100]}",
          file=sys.stderr, flush=True)


def _end(vms: list[Vm], signal_drive: Path, launcher: Any, timeout: float) -> float | None:
    """Tell the guests to finish; (s until every VMM exited, or None), each VM's record says if it was clean."""
    from firelet.guest import parse_exit_status
    from firelet.launcher.socket_path import LauncherError

    fd = os.open(signal_drive, os.O_WRONLY)
    try:
        os.pwrite(fd, STOP, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    t0 = time.monotonic()
    codes: dict[str, int | None] = {}
    if launcher is not None:
        try:
            launcher.wait(None, timeout_s=timeout)
        except LauncherError as exc:
            print(f"# {exc}", file=sys.stderr)
        codes = {r["id"]: r.get("exit_code") for r in launcher.list() if r["state"] != "running"}
    else:
        for vm in vms:
            assert vm.proc is not None
            try:
                codes[vm.id] = vm.proc.wait(timeout=max(0.1, t0 + timeout - time.monotonic()))
            except subprocess.TimeoutExpired:
                vm.proc.send_signal(signal.SIGKILL)
                vm.proc.wait()
    ended_s = time.monotonic() - t0 if len(codes) == len(vms) else None
    for vm in vms:
        status = parse_exit_status(vm.read())
        vm.record.update(exit_code=codes.get(vm.id), guest_exit=status,
                         clean=codes.get(vm.id) == 0 and status == 0)
    return ended_s


def measure(args: argparse.Namespace, vmlinux: Path, rootfs: Path) -> dict[str, Any]:
    import json

    from firelet.devtools.images import guest_cmdline_for

    # This checkout's firelet for the launcher and the cold VMMs, whatever the venv has installed.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    cmdline = f"{rigrun.BASE_CMDLINE.replace(' rw', ' ro')} quiet {guest_cmdline_for(GUEST_CMD)}"
    results: dict[str, Any] = {}
    qemu = shutil.which(QemuMicrovm.binary)
    for path in (vmlinux, rootfs, *([Path(qemu)] if qemu else [])):  # into the page cache: no kind pays the reads
        with path.open("rb") as f:
            while f.read(1 << 20):
                pass
    for kind in args.kinds:
        with tempfile.TemporaryDirectory(prefix=f"fl-{kind}-", dir="/tmp") as tmp:  # short: socket paths
            work = Path(tmp)
            signal_drive = work / "signal.img"
            boot = BootInputs(vmlinux=vmlinux, rootfs=rootfs, cmdline=cmdline, mem_mib=args.mem_mib,
                              drives=(signal_drive,))
            config = work / "vm_config.json"
            config.write_text(json.dumps({
                "boot-source": {"kernel_image_path": str(vmlinux), "boot_args": cmdline},
                "drives": [{"drive_id": "rootfs", "path_on_host": str(rootfs), "is_root_device": True,
                            "is_read_only": True},
                           {"drive_id": "signal", "path_on_host": str(signal_drive), "is_root_device": False,
                            "is_read_only": True}],
                "machine-config": {"vcpu_count": 1, "mem_size_mib": args.mem_mib},
            }))
            if kind == "qemu" and (why := QemuMicrovm().available()):
                results[NAMES[kind]] = {"unavailable": why}
                continue
            print(f"# {NAMES[kind]}: {args.count} at once", file=sys.stderr, flush=True)
            results[NAMES[kind]] = run_batch(kind, args, boot, config, work)
    return results


# -- report ---------------------------------------------------------------------------------
def _med(s: dict[str, float] | None, fmt: str = "{:.1f}") -> str:
    return "-" if s is None else fmt.format(s["median"])


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def _cells(r: dict[str, Any], ref: dict[str, Any]) -> list[str]:
    def median(res: dict[str, Any], key: str) -> float | None:
        s = res.get(key)
        return s["median"] if isinstance(s, dict) else None

    answer = r["answer_s"]
    ratios = " / ".join((_ratio(r.get("all_answered_s"), ref.get("all_answered_s")),
                         _ratio(median(r, "uss_mib"), median(ref, "uss_mib")),
                         _ratio(median(r, "own_uss_mib"), median(ref, "own_uss_mib"))))
    return [f"{r['all_answered_s']:.1f}" if r.get("all_answered_s") is not None else "-",
            "-" if answer is None else f"{answer['median']:.1f} / {answer['max']:.1f}", _med(r["guest_uptime_s"]),
            _med(r["uss_mib"]), _med(r["rss_mib"]), _med(r["guest_private_mib"]), _med(r["own_uss_mib"]),
            ratios, f"{r['answered']}/{r['count']} / {r['clean']}/{r['count']}"]


def render(report: dict[str, Any]) -> str:
    text = rigrun.render(report, f"{report['count']} at once per VMM; per VMM medians over the {report['count']}",
                         ["all answered s", "per-VM answer s (median / max)", "guest uptime at answer s",
                          "USS MiB", "RSS MiB",
                          "guest RAM private MiB", "USS - guest RAM MiB",
                          "ratio vs QEMU (all answered / USS / USS - guest)", "answered / clean ends"], _cells)
    notes = []
    for name, r in report["results"].items():
        if "unavailable" in r:
            continue
        avail = r.get("mem_available_mib", {})
        launcher = f", the launcher's own USS {r['launcher_uss_mib']:.1f} MiB" if "launcher_uss_mib" in r else ""
        ended = f"{r['end_s']:.1f} s" if r.get("end_s") is not None else "not all (see the failed rows)"
        notes.append(f"- {name}: {r['count']} launch requests took {r['launch_requests_s']:.2f} s; "
                     f"VMM+guest CPU at idle {_med(r['cpu_s'])} s each; MemAvailable {avail.get('before', 0):.0f} "
                     f"-> {avail.get('idle', 0):.0f} MiB with all idle{launcher}; after FLEET-STOP all VMMs "
                     f"exited in {ended}")
    return "\n".join([text, "", report["memory_note"], *notes])


def main(argv: list[str]) -> int:
    args = _parse_args(argv)
    if args.plot is not None and args.json is None:
        args.json = args.plot.with_suffix(".json")
    here, why = rigrun.kvm_here()
    if not here:
        inner = [a for i, a in enumerate(argv) if not (a == "--plot" or a.startswith("--plot=")
                                                         or (i and argv[i - 1] == "--plot"))]
        code = rigrun.rerun_in_rig(__file__, inner, args, why, boots=len(args.kinds))
    else:
        vmlinux, rootfs = rigrun.guest_images(args)
        total = mem_total_mib()
        report = {
            **rigrun.where(why),
            "guest": (f"{vmlinux.name} + shared read-only ext4 root, {args.mem_mib} MiB, 1 vCPU, kernel log off "
                      f"(quiet), command: answer then poll a read-only signal drive every 3 s"),
            "count": args.count, "mem_mib": args.mem_mib, "mem_total_mib": total,
            "oversubscription": args.count * args.mem_mib / total,
            "memory_note": (f"Guest RAM {args.count} x {args.mem_mib} MiB = {args.count * args.mem_mib} MiB "
                            f"against {total:.0f} MiB here (x{args.count * args.mem_mib / total:.2f}). "
                            "USS = Private_Clean + Private_Dirty of /proc/PID/smaps_rollup; it includes the "
                            "guest pages the guest touched (the private part of the guest-RAM mapping, "
                            "'guest RAM private'), so 'USS - guest RAM' is the VMM's own memory."),
            "results": measure(args, vmlinux, rootfs),
        }
        print(render(report))
        rigrun.write_json(args.json, report)
        code = 0
    if code == 0 and args.plot is not None and args.json is not None and args.json.exists():
        import fleetplot

        fleetplot.plot([args.json], args.plot)
        print(f"bench: plot written to {args.plot}", file=sys.stderr)
    return code


if __name__ == "__main__":
    rigrun.run(main)
