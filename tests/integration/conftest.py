"""Integration tests: real KVM, real guest kernels, real disk images.

They need a /dev/kvm that runs stock Linux guests. `make test` runs them inside
one boot of the nested rig (QEMU TCG + kvm-amd) when the local KVM cannot, so
they never skip: without real KVM they fail, saying how to run them.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

#: Generous bounds against hangs under the software-emulated rig; never timing assertions.
BOOT_TIMEOUT_S = float(os.environ.get("FIRELET_TEST_BOOT_TIMEOUT", "300"))


@pytest.fixture(scope="session", autouse=True)
def real_kvm() -> None:
    from firelet.devtools.nested.detect import local_kvm_runs_stock_guests

    ok, reason = local_kvm_runs_stock_guests()
    if not ok:
        pytest.fail(f"integration tests need a KVM that runs stock guests ({reason}); run them with `make test`", pytrace=False)


@pytest.fixture(scope="session")
def kernel():
    from firelet.devtools.images import build_kernel

    return build_kernel()


@pytest.fixture(scope="session")
def rootfs_template() -> Path:
    from firelet.devtools.images import build_rootfs

    return build_rootfs()


@pytest.fixture(scope="session")
def initramfs() -> Path:
    from firelet.devtools.images import build_initramfs

    return build_initramfs()


@pytest.fixture
def rootfs(rootfs_template: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the guest root filesystem."""
    from firelet.devtools.images import copy_rootfs

    return copy_rootfs(tmp_path / "rootfs.ext4", source=rootfs_template)


def boot(kernel_path: Path, *, timeout: float = BOOT_TIMEOUT_S, **kwargs):
    """Boot a MicroVM to its end; returns (outcome, console text, guest exit status)."""
    import faulthandler
    import threading

    from firelet import MicroVM
    from firelet.devtools.images import parse_exit_status

    # A build or start that never returns leaves every thread's stack in the output: dumped
    # from a Python thread, holding the GIL (faulthandler's own timer thread reads the frames
    # of running threads without it, which can crash the process; firelet.cli.lean).
    watchdog = threading.Timer(timeout, faulthandler.dump_traceback, kwargs={"all_threads": True})
    watchdog.daemon = True
    watchdog.start()
    try:
        vm = MicroVM(kernel_path, **kwargs)
    except BaseException:
        watchdog.cancel()
        raise
    try:
        vm.start()
        watchdog.cancel()
        if vm.vmm.wait(timeout) is None:  # stuck: show where every thread and vCPU is before stopping it
            faulthandler.dump_traceback(all_threads=True)
            exit_if_the_rig_corrupted_a_vcpu("\n".join(vm.vmm.describe_vcpus()))
        outcome = vm.wait(timeout=0)
        text = vm.console.text()
    finally:
        watchdog.cancel()
        vm.close()
    return outcome, text, parse_exit_status(text)


def read_until(fd: int, needle: bytes, timeout: float) -> bytes:
    """Read ``fd`` (a pipe or pty) until ``needle`` shows; what was read. Fails on timeout or EOF first."""
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {needle!r} within {timeout} s; got {seen[-1500:]!r}")
        ready, _, _ = select.select([fd], [], [], min(left, 1.0))
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # a pty whose other side closed
                chunk = b""
            if not chunk:
                raise AssertionError(f"no {needle!r} before the end of the output; got {seen[-1500:]!r}")
            seen += chunk
    return seen


def await_console(proc: subprocess.Popen, needle: bytes, timeout: float = BOOT_TIMEOUT_S) -> bytes:
    """Read a firelet process's console (its stdout pipe) until ``needle``; what was read.

    If it does not show in time, the process's threads' stacks and vCPUs' registers
    (SIGUSR2, firelet.cli.lean; its stderr must be a pipe) go into the failure, and a
    vCPU state the rig corrupted ends the session with 125, as in ``run_reported``.
    """
    assert proc.stdout is not None and proc.stderr is not None
    try:
        return read_until(proc.stdout.fileno(), needle, timeout)
    except AssertionError as failure:
        if proc.poll() is not None:
            raise
        proc.send_signal(signal.SIGUSR2)
        report = _read_for(proc.stderr.fileno(), 15)  # the report pauses the vCPUs (up to 5 s)
        exit_if_the_rig_corrupted_a_vcpu(report)
        raise AssertionError(f"{failure}\nstderr (thread stacks):\n{report[-6000:]}") from None


def _read_for(fd: int, seconds: float) -> str:
    """What ``fd`` gives within ``seconds`` (or until its end)."""
    seen = b""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        seen += chunk
    return seen.decode(errors="replace")


def read_file_in_image(image: Path, path: str) -> str:
    """Read a file from an ext4 image without mounting it (debugfs)."""
    out = subprocess.run(
        ["debugfs", "-R", f"cat {path}", str(image)], capture_output=True, text=True, check=True
    )
    return out.stdout


def firelet_cli(*args: str, timeout: float = BOOT_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run the `firelet` command as a user would; stdin is not a terminal."""
    return run_reported([sys.executable, "-m", "firelet", *args], timeout=timeout)


def run_reported(argv: list[str], *, timeout: float = BOOT_TIMEOUT_S,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a firelet command (firelet, firelet-vmm, within `ip netns exec` or not) to its end.

    If it does not end in time, its threads' stacks and vCPUs' registers (SIGUSR2,
    firelet.cli.lean) and the console's tail go into the failure.
    """
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR2)
        try:
            out, err = proc.communicate(timeout=15)  # the report pauses the vCPUs (up to 5 s)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        exit_if_the_rig_corrupted_a_vcpu(err)
        raise AssertionError(f"{' '.join(argv[:6])} did not end within {timeout} s; "
                             f"console tail:\n{out[-3000:]}\nstderr (thread stacks):\n{err[-6000:]}") from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def exit_if_the_rig_corrupted_a_vcpu(report: str) -> None:
    """End the session with status 125, "the rig failed", when a stuck guest's vCPU state is impossible.

    The nested rig's emulated SVM now and then hands a guest's vCPU the outer kernel's
    registers (a cr3 outside guest RAM; README, "Testing"): that guest cannot take
    another step, whatever the VMM does. scripts/test reruns the integration session in
    a fresh rig on 125, as it does when the rig's kernel hangs. Any other stuck guest
    stays a test failure.
    """
    from firelet.vstate.vcpu import IMPOSSIBLE_STATE

    if IMPOSSIBLE_STATE in report:
        pytest.exit(f"the rig corrupted a guest vCPU, not a firelet failure:\n{report}", returncode=125)


#: What Linux's virtio drivers print when the used ring names a chain they had not made available.
RING_CORRUPTION = "is not a head!"


def fail_if_a_driver_saw_a_bad_ring(console: str) -> None:
    """A guest driver's "not a head" fails the test at once, with its line (a stream that
    stops on it would otherwise wait out its deadline).

    It was seen in the rig until 2026-12-04 and then found to be firelet's: a ring index
    written with ``struct.pack_into`` reads 0 for an instant (docs/testing.md).
    """
    if RING_CORRUPTION in console:
        line = next(line for line in console.splitlines() if RING_CORRUPTION in line)
        pytest.fail(f"the guest's virtio driver found a bad used ring: {line.strip()}\n{console[-3000:]}")


#: A triple fault that leaves the vCPU in its reset state: what KVM on AMD reports for any
#: triple fault (it re-initialises the VMCB), including the rig's (docs/testing.md).
#: Matched as a message prints it ("guest triple-faulted: vCPU 0: rip=...") and as an assertion's
#: repr of the VmExit shows it ("'guest triple-faulted'>, detail='vCPU 0: rip=...").
_RESET_STATE_TRIPLE_FAULT = re.compile(
    r"guest triple-faulted(?::|'>, detail=') ?'?vCPU \d+: rip=0xfff0 rsp=0x0 .*cr3=0x0 ")


def exit_if_the_rig_reset_a_guest(text: str) -> None:
    """In the nested rig only: a guest that triple-faulted into its reset state while booting a
    guest that boots everywhere else ends the session with 125.

    The rig's emulated SVM kills guests this way when several boot at once (at ten it then
    takes the rig's own kernel down; docs/testing.md). On AMD every triple fault leaves the
    reset state, so this cannot tell a firelet bug apart: one would fail every rerun, and
    scripts/test fails the run after five rigs. Outside the rig it stays a failure.
    """
    from firelet.devtools.nested.detect import ENV_IN_RIG

    found = _RESET_STATE_TRIPLE_FAULT.search(text)
    if os.environ.get(ENV_IN_RIG) == "1" and found:
        pytest.exit(f"the rig killed a booting guest, not (as far as known) a firelet failure: {found.group(0)}",
                    returncode=125)


def file_tail(path: Path, chars: int = 3000) -> str:
    """The end of a file a failure should show (a console, a VMM's stderr or log), or "(none)"."""
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(none)"


#: A rate limit measured in the rig is at most this fraction of what the path does unlimited there.
BIND = 5


def binding_limit(target: int, unlimited: float, floor: int, bind: int = BIND) -> int:
    """``target`` (an issue's figure) where it binds against ``unlimited`` (at most 1/``bind`` of
    it), else the largest round figure that does: a limit above what the path does measures nothing."""
    if target * bind <= unlimited:
        return target
    step = 10 ** max(0, len(str(int(unlimited / bind))) - 2)
    limit = int(unlimited / bind) // step * step
    assert limit >= floor, f"unlimited, the path did only {unlimited:g}/s here: no limit below it can be measured"
    return limit


def guest_marks(console: str) -> dict[int, float]:
    """``MARK step uptime`` lines a rate test's guest printed: each step's guest uptime.

    Whole lines only (a pattern ending in a newline): a line the console is still writing
    reads "8" for "80.12", which looked like a clock going back (docs/testing.md).
    """
    return {int(i): float(t) for i, t in re.findall(r"^MARK (\d+) ([\d.]+)\n", console.replace("\r", ""), re.M)}


def fail_if_a_guest_clock_went_back(marks: dict[int, float], detail: str = "") -> None:
    """A guest whose uptime, printed after each step, went backwards fails the test: a rate
    measured across the jump would mean nothing.

    Seen four times in the rig up to 2026-12-04 and taken for the rig's clock; each was the test
    reading a console line the guest had not finished ("8" of "80.12"): the tests now parse whole
    lines only (docs/testing.md).
    """
    steps = sorted(marks)
    back = [(a, b) for a, b in itertools.pairwise(steps) if marks[b] < marks[a]]
    if back:
        a, b = back[0]
        pytest.fail(f"the guest's clock went back (step {a} at {marks[a]} s, step {b} at {marks[b]} s){detail}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test that failed on a vCPU state marked impossible (a triple fault's report, say) ends
    the session with 125 too: the rig's KVM handed the guest the host's state."""
    outcome = yield
    from firelet.vstate.vcpu import IMPOSSIBLE_STATE

    report = outcome.get_result()
    if report.failed and IMPOSSIBLE_STATE in report.longreprtext:
        pytest.exit(f"the rig corrupted a guest vCPU in {item.nodeid}, not a firelet failure", returncode=125)
    if report.failed:
        exit_if_the_rig_reset_a_guest(report.longreprtext)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """With FIRELET_TEST_RESULTS set, each test's outcome goes to that file as it ends.

    A line per outcome: "passed <id>" for a passing call, "failed <id>" for any failing
    phase. scripts/test shares the file's folder with the rig: when the rig itself fails
    (status 125), the next session deselects the tests that already ended instead of
    running the whole suite again, and a failure of an earlier session still counts. Each
    failure's report also goes to ``<file>.failures`` as it happens, for scripts/test to
    show when the session that had it never reached its summary.
    """
    path = os.environ.get("FIRELET_TEST_RESULTS")
    if path and (report.failed or (report.when == "call" and report.passed)):
        with open(path, "a") as f:
            f.write(f"{report.outcome} {report.nodeid}\n")
    if path and report.failed:  # pytest prints it at the session's end, which a dying rig never reaches
        with open(f"{path}.failures", "a") as f:
            f.write(f"\n=== {report.nodeid} ({report.when})\n{report.longreprtext[-12000:]}\n")


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def api_call(sock: Path, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One request to a firelet-vmm API socket: its status and its decoded JSON body (or None)."""
    payload = b"" if body is None else json.dumps(body).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(BOOT_TIMEOUT_S)
        s.connect(str(sock))
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), (json.loads(rest) if rest else None)


def api_ok(sock: Path, method: str, path: str, body: Any = None) -> Any:
    """:func:`api_call` that must succeed (200 or 204); its JSON answer."""
    status, answer = api_call(sock, method, path, body)
    assert status in (200, 204), f"{method} {path}: {status} {answer}"
    return answer
