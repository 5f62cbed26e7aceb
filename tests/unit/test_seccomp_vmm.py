"""firelet-vmm's own threads confined by its own code path, on the real /dev/kvm (issue #14).

Each test runs ``seccomp_escape.py``: the ``firelet-vmm`` entry point plus a device kind
registered with the builder (its MMIO write handler runs on the vCPU thread the guest wrote
from) or a route added to a resource's route table (run on the API thread). The guest is a
few instructions in an ELF "kernel": one write to that device, then a reset through the
i8042, which ends the VMM. An escape attempt must kill the process with SIGSYS; without
filtering (``--no-seccomp``) the same attempts return and the process lives on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from seccomp_escape import ATTEMPTS, GUEST_CODE

from firelet.devtools.images.tiny import elf
from firelet.seccomp import DEFAULT_POLICY_PATH

from api_fake_backend import call, raw_exchange, request_bytes, wait_for_api

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("seccomp_escape.py")
ALL = ",".join(ATTEMPTS)
CONFINED_GUEST = "guest wrote on fc_vcpu 0: confined as vcpu, unconfined threads []"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{SCRIPT.parent}"}


def _vm_config(tmp_path: Path) -> Path:
    kernel, config = tmp_path / "vmlinux", tmp_path / "vm.json"
    kernel.write_bytes(elf(GUEST_CODE))
    config.write_text(json.dumps({"boot-source": {"kernel_image_path": str(kernel)},
                                  "machine-config": {"vcpu_count": 1, "mem_size_mib": 64}}))
    return config


def _guest(tmp_path: Path, attempts: str, *flags: str, prelude: str = "") -> subprocess.CompletedProcess[str]:
    """firelet-vmm --no-api --config-file booting the tiny guest, whose write runs ``attempts``."""
    argv = [sys.executable, str(SCRIPT), "vcpu", attempts, "--", "--no-api", "--config-file",
            str(_vm_config(tmp_path)), *flags]
    if prelude:
        argv = [sys.executable, "-c", textwrap.dedent(prelude) + "\nimport runpy, sys\nsys.argv = "
                + repr(argv[1:]) + "\nrunpy.run_path(sys.argv[0], run_name='__main__')"]
    return subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=90, check=False)


def test_every_thread_is_confined_before_the_guest_runs_and_the_vm_ends_cleanly(tmp_path: Path) -> None:
    result = _guest(tmp_path, "none")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [CONFINED_GUEST]


def test_a_debug_log_from_every_thread_stays_within_the_filters(tmp_path: Path) -> None:
    """At Debug level the vCPU logs its registers as it stops (KVM_GET_* ioctls on its own thread)."""
    log = tmp_path / "log"
    result = _guest(tmp_path, "none", "--log-path", str(log), "--level", "Debug", "--show-level", "--show-log-origin")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [CONFINED_GUEST]
    assert ":fc_vcpu 0:DEBUG:" in log.read_text() and "vCPU 0 stopped: rip=" in log.read_text()


@pytest.mark.parametrize("name", list(ATTEMPTS))
def test_an_escape_from_a_vcpu_thread_kills_the_process_with_sigsys(tmp_path: Path, name: str) -> None:
    result = _guest(tmp_path, name)
    assert result.returncode == -signal.SIGSYS, (result.stdout, result.stderr)
    assert result.stdout.splitlines() == [CONFINED_GUEST]  # the guest ran, confined, and nothing survived


def test_without_seccomp_the_same_attempts_return_on_the_vcpu_thread(tmp_path: Path) -> None:
    result = _guest(tmp_path, ALL, "--no-seccomp")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "guest wrote on fc_vcpu 0: confined as None, unconfined threads []"
    assert [line.split(":")[0] for line in lines[1:]] == [f"survived {n} on fc_vcpu 0" for n in ATTEMPTS]


def test_a_custom_filter_file_is_the_one_installed(tmp_path: Path) -> None:
    """``--seccomp-filter``: firelet's policy plus socket(AF_INET) for vCPUs lets that attempt return."""
    policy = json.loads(Path(DEFAULT_POLICY_PATH).read_text())
    policy["vcpu"]["filter"].append({"syscall": "socket", "args": [{"index": 0, "type": "dword", "op": "eq", "val": 2}]})
    custom = tmp_path / "filter.json"
    custom.write_text(json.dumps(policy))
    result = _guest(tmp_path, "socket,ptrace", "--seccomp-filter", str(custom))
    assert result.returncode == -signal.SIGSYS, (result.stdout, result.stderr)
    assert result.stdout.splitlines() == [CONFINED_GUEST, "survived socket on fc_vcpu 0: socket made"]


def test_a_thread_that_never_confines_itself_keeps_the_guest_out(tmp_path: Path) -> None:
    """The vCPUs wait until every thread of the process is confined; a stray one ends the VM unrun."""
    result = _guest(tmp_path, "none", "--log-path", str(tmp_path / "log"), "--level", "Info", prelude="""
        import threading, time
        threading.Thread(target=time.sleep, args=(120,), name="stray", daemon=True).start()
    """)
    assert result.returncode != 0
    assert "guest wrote" not in result.stdout
    log = (tmp_path / "log").read_text()
    assert "thread(s) stray did not confine themselves within 10 s; the guest did not run" in log


def test_a_running_guest_survives_the_stack_report_and_sigterm_ends_the_vmm_cleanly(tmp_path: Path) -> None:
    """SIGUSR2's report (the loop pauses the vCPUs) and SIGTERM (main stops them) on a confined VMM."""
    kernel, config, sock = tmp_path / "vmlinux", tmp_path / "vm.json", tmp_path / "api.sock"
    kernel.write_bytes(elf(bytes.fromhex("f4ebfd")))  # hlt; jmp hlt
    config.write_text(json.dumps({"boot-source": {"kernel_image_path": str(kernel)},
                                  "machine-config": {"vcpu_count": 2, "mem_size_mib": 64}}))
    stderr = tmp_path / "stderr"
    with stderr.open("wb") as err_file:
        proc = subprocess.Popen([sys.executable, "-m", "firelet.cli.vmm", "--api-sock", str(sock), "--config-file",
                                 str(config)], env=_env(), stdout=subprocess.DEVNULL, stderr=err_file)
    try:
        wait_for_api(sock, proc)
        while call(sock, "GET", "/")[1]["state"] != "Running":
            assert proc.poll() is None
        proc.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + 30
        # The report: each vCPU's registers, or "vCPUs: ..." if a loaded host kept one from pausing
        # within 5 s. (SIGTERM during the report is another story: wait for it.)
        while "firelet-vmm: vCPU" not in stderr.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, stderr.read_text()
            time.sleep(0.05)
        assert call(sock, "GET", "/")[1]["state"] == "Running"  # the report paused and resumed the vCPUs
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0, stderr.read_text()
    assert "firelet-vmm: vCPU 0: rip=" in stderr.read_text() or "firelet-vmm: vCPUs: " in stderr.read_text()


def _api_vmm(tmp_path: Path, attempts: str, *flags: str) -> tuple[subprocess.Popen[bytes], Path]:
    sock = tmp_path / "api.sock"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "api", attempts, "--", "--api-sock", str(sock), *flags],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for_api(sock, proc)
    return proc, sock


@pytest.mark.parametrize("name", list(ATTEMPTS))
def test_an_escape_from_the_api_thread_kills_the_process_with_sigsys(tmp_path: Path, name: str) -> None:
    proc, sock = _api_vmm(tmp_path, name)
    try:
        try:  # the process dies mid-request: no answer
            answer = raw_exchange(sock, request_bytes("PUT", "/escape", {}))
        except ConnectionError:
            answer = b""
        assert answer == b""
        assert proc.wait(20) == -signal.SIGSYS
        assert proc.stdout is not None and b"survived" not in proc.stdout.read()
    finally:
        proc.kill()
        proc.communicate(timeout=10)


def test_without_seccomp_the_same_attempts_return_on_the_api_thread(tmp_path: Path) -> None:
    proc, sock = _api_vmm(tmp_path, ALL, "--no-seccomp")
    try:
        assert call(sock, "PUT", "/escape", {})[0] == 204
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert [line.split(":")[0] for line in out.decode().splitlines()] == [f"survived {n} on fc_api" for n in ATTEMPTS]


def test_confine_does_nothing_until_the_process_enables_a_policy_and_refuses_a_second_filter() -> None:
    code = textwrap.dedent("""
        import threading
        from firelet import seccomp
        print(seccomp.confine("vcpu"), seccomp.unconfined_threads())
        seccomp.enable(seccomp.default_policy())
        worker = threading.Thread(target=lambda: print(seccomp.confine("metrics"), seccomp.confined_kind(), flush=True),
                                  name="worker")
        worker.start()
        worker.join()
        print(seccomp.unconfined_threads())
        seccomp.confine("main")
        print(seccomp.unconfined_threads())
        try:
            seccomp.confine("main")
        except seccomp.SeccompError as exc:
            print(exc)
    """)
    result = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "False []", "True metrics", "['MainThread']", "[]",
        "thread MainThread is already confined (as main); it cannot also take the main filter"]


def test_a_confined_vmm_attaches_a_tap_at_the_put_and_at_the_start(tmp_path: Path) -> None:
    """PUT /network-interfaces opens the TAP on the API thread, InstanceStart on the event loop's;
    both are confined by then. A guest with the interface runs, and a missing TAP is a 400."""
    from firelet.hostnet import links
    from firelet.hostnet.netns import create_netns, netns_path, remove_netns

    if os.geteuid() != 0 or not Path("/dev/net/tun").exists():  # pragma: no cover - the CI machine is root
        pytest.fail("this test makes a network namespace and a TAP: run it as root with /dev/net/tun", pytrace=False)
    name = f"flsc{os.getpid() % 100000}"
    kernel, sock = tmp_path / "vmlinux", tmp_path / "api.sock"
    kernel.write_bytes(elf(bytes.fromhex("f4ebfd")))  # hlt; jmp hlt
    create_netns(name)
    try:
        links.create_tap("tap0", netns=name)
        proc = subprocess.Popen(["nsenter", f"--net={netns_path(name)}", sys.executable, "-m", "firelet.cli.vmm",
                                 "--api-sock", str(sock)], env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        try:
            wait_for_api(sock, proc)
            assert call(sock, "PUT", "/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": "tap0"})[0] == 204
            status, body = call(sock, "PUT", "/network-interfaces/eth1", {"iface_id": "eth1", "host_dev_name": "none0"})
            assert status == 400 and "'none0' does not exist" in body["fault_message"]
            assert call(sock, "PUT", "/boot-source", {"kernel_image_path": str(kernel)})[0] == 204
            assert call(sock, "PUT", "/actions", {"action_type": "InstanceStart"})[0] == 204
            assert call(sock, "GET", "/")[1]["state"] == "Running"
            assert proc.poll() is None
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
        assert code == 0, proc.stderr.read() if proc.stderr else code
    finally:
        remove_netns(name)
