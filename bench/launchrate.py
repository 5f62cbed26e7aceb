"""Launch rate to a tiny guest's first port write on the host: warm (launcher fork) vs cold (exec).

Issue #15 asks how many microVMs per second a host starts. The local /dev/kvm cannot
boot Linux, so each VM boots the tiny ELF "kernel" of :mod:`firelet.devtools.images.tiny`
(64 MiB, 1 vCPU, ``firelet-vmm --no-api --config-file CFG``): its first and only port
write resets the CPU through the i8042, and firelet-vmm then exits with status 0. That
exit is where a VM counts as having reached its port write: it takes the whole path
(interpreter or fork, config, guest memory, KVM VM and vCPU, kernel load, vCPU thread,
the guest's run, the exit) and is seen the same way for both kinds, by the parent
reaping it (the launcher's ``wait4``; the bench's own for a cold one).

N VMs are started at once (back to back) for each count; the rate is N over the time
from the first launch request to the last exit. Each count is repeated until at least
:data:`MIN_VMS` VMs went each way, warm and cold batches alternating, so a quiet or busy
moment of the shared host falls on both.
"""

from __future__ import annotations

import calendar
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from firelet.devtools.images.tiny import RESET_CODE, elf
from firelet.launcher.client import Launcher

#: Each count is repeated until this many VMs were started each way (per-VM figures need a few).
MIN_VMS = 20
#: The guest every VM boots (issue #15: 64 MiB, 1 vCPU).
MEM_MIB, VCPUS = 64, 1
#: How long one batch may take before the bench gives up (s): 200 cold VMMs on 2 busy cores take a while.
BATCH_TIMEOUT_S = 600.0


@dataclass
class Batch:
    """N VMs started at once one way: the batch's time and each VM's latency, CPU and exit status."""

    warm: bool
    count: int
    total_s: float = 0.0  # first launch request -> last VM reaped
    wall_ms: list[float] = field(default_factory=list)  # each VM: its launch request -> reaped
    cpu_ms: list[float] = field(default_factory=list)  # each VM's user + system CPU (wait4's rusage)
    failures: list[str] = field(default_factory=list)  # VMs that did not end with status 0, and why
    launcher_cpu_ms: float = 0.0  # the launcher's own CPU during the batch (warm only)

    @property
    def rate(self) -> float:
        """VMs per second to all of them having reached their port write."""
        return self.count / self.total_s


def write_guest(work: Path) -> Path:
    """The tiny guest's kernel and a firelet-vmm config file booting it; the config's path."""
    kernel, config = work / "reset.elf", work / "reset.json"
    kernel.write_bytes(elf(RESET_CODE))
    config.write_text(json.dumps({"boot-source": {"kernel_image_path": str(kernel)},
                                  "machine-config": {"vcpu_count": VCPUS, "mem_size_mib": MEM_MIB}}))
    return config


def _vmm_argv(config: Path) -> list[str]:
    return ["--no-api", "--config-file", str(config)]


def _schedstat_ms(pid: int) -> float:
    """A process's CPU time so far (ns on a CPU, /proc/PID/schedstat), in ms."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0]) / 1e6


def warm_batch(launcher: Launcher, config: Path, count: int, work: Path) -> Batch:
    """``count`` VMs forked by the launcher back to back; waits for all to end, then forgets them.

    A VM's latency is its launch request's round trip (the reply comes once forked) plus
    the launcher's ``uptime_s`` for it (fork to reap): a slight over-estimate, as the
    reply's trip back is counted too.
    """
    assert launcher.process is not None
    batch, requests = Batch(True, count), {}
    cpu0 = _schedstat_ms(launcher.process.pid)
    t0 = time.perf_counter()
    for i in range(count):
        t = time.perf_counter()
        launcher.launch(f"r{i}", _vmm_argv(config), stdout="null", stderr=str(work / f"warm-{i}.err"))
        requests[f"r{i}"] = time.perf_counter() - t
    records = launcher.wait(timeout_s=BATCH_TIMEOUT_S)
    batch.total_s = time.perf_counter() - t0
    batch.launcher_cpu_ms = _schedstat_ms(launcher.process.pid) - cpu0
    launcher.reap()
    for record in records:
        batch.wall_ms.append((requests[record["id"]] + record["uptime_s"]) * 1000)
        batch.cpu_ms.append(record["cpu_s"] * 1000)
        if record["exit_code"] != 0:
            why = record.get("error") or record["exit_signal"] or f"status {record['exit_code']}"
            batch.failures.append(f"warm {record['id']}: {why}")
    return batch


def _pythonpath() -> str:
    """This checkout first, so a cold VMM runs the same code as the launcher's children."""
    return str(Path(__file__).resolve().parent.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")


def _spawn_cold(vmm_argv: list[str], stderr: Path) -> int:
    """``firelet-vmm`` as its own process (posix_spawn: the cheapest start a parent can give it)."""
    env = dict(os.environ, PYTHONPATH=_pythonpath())
    files = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
             (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
             (os.POSIX_SPAWN_OPEN, 2, str(stderr), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)]
    argv = [sys.executable, "-m", "firelet.cli.vmm", *vmm_argv]
    return os.posix_spawn(sys.executable, argv, env, file_actions=files)


def _reap_cold(batch: Batch, started: dict[int, tuple[float, Path]], *, block: bool) -> None:
    """Reap ended cold VMMs as the launcher does (``wait4``): latency, CPU, status into ``batch``."""
    while started:
        pid, status, usage = os.wait4(-1, 0 if block else os.WNOHANG)
        if pid == 0:
            return
        if pid not in started:  # not a VMM of this batch (the launcher is a child too; it must not end here)
            raise RuntimeError(f"a process the bench did not spawn for this batch ended: pid {pid}")
        t_spawn, stderr = started.pop(pid)
        batch.wall_ms.append((time.perf_counter() - t_spawn) * 1000)
        batch.cpu_ms.append((usage.ru_utime + usage.ru_stime) * 1000)
        if os.waitstatus_to_exitcode(status) != 0:
            lines = stderr.read_text(errors="replace").strip().splitlines()
            batch.failures.append(f"cold pid {pid}: status {os.waitstatus_to_exitcode(status)}: "
                                  f"{lines[-1] if lines else 'no stderr'}")


def cold_batch(config: Path, count: int, work: Path) -> Batch:
    """``count`` cold firelet-vmm processes spawned back to back, reaped as they end."""
    batch, started = Batch(False, count), {}
    t0 = time.perf_counter()
    for i in range(count):
        t, stderr = time.perf_counter(), work / f"cold-{i}.err"
        started[_spawn_cold(_vmm_argv(config), stderr)] = (t, stderr)
        _reap_cold(batch, started, block=False)  # the launcher reaps between requests too
    _reap_cold(batch, started, block=True)
    batch.total_s = time.perf_counter() - t0
    return batch


def _reset_time(log: Path) -> float:
    """When the VMM logged the guest's reset (its log's UTC wall-clock stamp, ns digits), in epoch seconds."""
    line = next(line for line in log.read_text().splitlines() if "guest reset" in line)
    stamp, _, nanos = line.split()[0].partition(".")
    return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S")) + int(nanos) / 1e9


def reset_split(launcher: Launcher, config: Path, work: Path, runs: int) -> dict[bool, list[tuple[float, float]]]:
    """One VM at a time, logging: (launch -> the reset logged, the reset -> reaped) ms, each way.

    The table's figures end at the VMM's exit; this says how much of that is the exit
    itself (threads joined, memory unmapped, and for a cold VMM the interpreter's
    finalisation), measured apart because the log it needs is not free.
    """
    split: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for i in range(runs):
        for warm in (True, False):
            log = work / f"split-{int(warm)}-{i}.log"
            argv = [*_vmm_argv(config), "--log-path", str(log), "--level", "Info"]
            t0 = time.time()
            if warm:
                launcher.launch(f"s{i}", argv, stdout="null", stderr="null")
                launcher.wait(f"s{i}", timeout_s=BATCH_TIMEOUT_S)
                launcher.reap()
            else:
                os.waitpid(_spawn_cold(argv, log.with_suffix(".err")), 0)
            t_end, t_reset = time.time(), _reset_time(log)
            split[warm].append(((t_reset - t0) * 1000, (t_end - t_reset) * 1000))
    return split


def measure(launcher: Launcher, config: Path, work: Path, counts: list[int],
            cold_max: int) -> list[tuple[int, list[Batch], list[Batch]]]:
    """For each count: (count, warm batches, cold batches), alternating which goes first."""
    results = []
    for count in counts:
        rounds = max(1, -(-MIN_VMS // count))
        warm: list[Batch] = []
        cold: list[Batch] = []
        for r in range(rounds):
            for is_warm in ((True, False) if r % 2 == 0 else (False, True)):
                if is_warm:
                    warm.append(warm_batch(launcher, config, count, work))
                elif count <= cold_max:
                    cold.append(cold_batch(config, count, work))
        results.append((count, warm, cold))
    return results


def _stats(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} [{min(values):.0f}-{max(values):.0f}]"


def _rate(batches: list[Batch]) -> str:
    rates = [b.rate for b in batches]
    if len(rates) == 1:
        return f"{rates[0]:.1f}"
    return f"{statistics.median(rates):.1f} [{min(rates):.1f}-{max(rates):.1f}]"


def _row(count: int, warm: list[Batch], cold: list[Batch]) -> str:
    """One table row: rates, per-VM latency and CPU each way, and the warm/cold ratio of the rates."""
    w_wall = [ms for b in warm for ms in b.wall_ms]
    w_cpu = [ms for b in warm for ms in b.cpu_ms]
    launcher_ms = sum(b.launcher_cpu_ms for b in warm) / sum(b.count for b in warm)
    cells = [str(count), _rate(warm), _stats(w_wall), _stats(w_cpu), f"{launcher_ms:.1f}"]
    if cold:
        c_wall = [ms for b in cold for ms in b.wall_ms]
        c_cpu = [ms for b in cold for ms in b.cpu_ms]
        ratio = statistics.median(b.rate for b in warm) / statistics.median(b.rate for b in cold)
        cells += [_rate(cold), _stats(c_wall), _stats(c_cpu), f"{ratio:.1f}x"]
    else:
        cells += ["not run (capped)", "", "", ""]
    return "| " + " | ".join(cells) + " |"


def report(results: list[tuple[int, list[Batch], list[Batch]]], cold_max: int) -> str:
    """The markdown table, the raw numbers, and any VM that did not end cleanly."""
    capped = [count for count, _, cold in results if not cold]
    cap = (f"; cold not run for N={','.join(map(str, capped))} (more than --rate-cold-max {cold_max} at once: "
           "its rate is bound by its CPU per VM on this box's cores)") if capped else ""
    lines = [f"launch → the tiny guest's reset (firelet-vmm exits 0), {MEM_MIB} MiB, {VCPUS} vCPU; "
             f"N started at once; medians [min-max] over every VM (per-VM) or batch (rate){cap}", "",
             "| N at once | warm VMs/s | warm per-VM ms | warm CPU ms/VM | launcher CPU ms/VM "
             "| cold VMs/s | cold per-VM ms | cold CPU ms/VM | warm/cold rate |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [_row(count, warm, cold) for count, warm, cold in results]
    lines.append("")
    for count, warm, cold in results:
        for name, batches in (("warm", warm), ("cold", cold)):
            for b in batches:
                lines.append(f"raw {name} N={count}: batch {b.total_s:.3f} s ({b.rate:.1f} VMs/s); per-VM ms "
                             + " ".join(f"{ms:.0f}" for ms in sorted(b.wall_ms)) + "; CPU ms "
                             + " ".join(f"{ms:.0f}" for ms in sorted(b.cpu_ms)))
    failures = [f for _, warm, cold in results for b in warm + cold for f in b.failures]
    if failures:
        lines += ["", f"{len(failures)} VMs did not end with status 0 (their figures are in the table):"]
        lines += failures[:20]
    return "\n".join(lines)


def report_split(split: dict[bool, list[tuple[float, float]]]) -> str:
    """Where a lone VM's time goes: up to its reset, and its exit after it."""
    lines = ["", "One VM at a time, with an Info log to time the reset:", "",
             "| VMM | launch → reset logged, ms | reset → reaped, ms |", "|---|---|---|"]
    for warm in (True, False):
        lines.append(f"| {'warm' if warm else 'cold'} (n={len(split[warm])}) | "
                     f"{_stats([a for a, _ in split[warm]])} | {_stats([b for _, b in split[warm]])} |")
    return "\n".join(lines)
