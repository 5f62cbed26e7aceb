"""``firelet-vmm`` as a real process: flags, socket lifecycle, config file, logs and metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from firelet.devtools.cache import repo_root

from api_fake_backend import call, wait_for_api


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(repo_root()) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _vmm(*args: str) -> list[str]:
    return [sys.executable, "-m", "firelet.cli.vmm", *args]


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    sock = tmp_path / "api.sock"
    proc = subprocess.Popen(
        _vmm("--api-sock", str(sock), "--id", "cli-vm", "--log-path", str(tmp_path / "log"), "--level", "debug",
             "--show-level", "--metrics-path", str(tmp_path / "metrics"), "--no-seccomp"),
        env=_env(), stderr=subprocess.PIPE)
    try:
        wait_for_api(sock, proc)
        yield proc, sock
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if proc.stderr:
            proc.stderr.close()


def test_serves_and_removes_its_socket_on_sigterm(running: tuple[subprocess.Popen[bytes], Path], tmp_path: Path) -> None:
    proc, sock = running
    assert call(sock, "GET", "/") == (200, {"id": "cli-vm", "state": "Not started",
                                           "vmm_version": call(sock, "GET", "/")[1]["vmm_version"], "app_name": "firelet"})
    assert call(sock, "PUT", "/actions", {"action_type": "FlushMetrics"})[0] == 204
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert not sock.exists()
    lines = [json.loads(line) for line in (tmp_path / "metrics").read_text().splitlines()]
    assert lines[0]["get_api_requests"]["instance_info_count"] == 3  # two here, one by the fixture
    assert lines[0]["api_server"]["process_startup_time_us"] > 0
    assert "[cli-vm:MainThread:INFO] Running firelet-vmm" in (tmp_path / "log").read_text()


def test_refuses_to_clobber_a_live_socket(running: tuple[subprocess.Popen[bytes], Path]) -> None:
    _, sock = running
    result = subprocess.run(_vmm("--api-sock", str(sock)), env=_env(), capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr.strip() == (f"firelet-vmm: error: API socket {sock} is in use by a running process; "
                                     "stop it or choose another --api-sock")
    assert call(sock, "GET", "/")[0] == 200  # the live one is untouched


def test_instance_start_without_a_vmm_build_or_kernel_is_a_fault(running: tuple[subprocess.Popen[bytes], Path],
                                                                  tmp_path: Path) -> None:
    _, sock = running
    status, body = call(sock, "PUT", "/boot-source", {"kernel_image_path": str(tmp_path / "missing-vmlinux")})
    assert status == 400 and body["fault_message"].startswith(  # refused at the PUT, as Firecracker does
        "Boot source error: The kernel file cannot be opened: No such file or directory (os error 2)")
    status, body = call(sock, "PUT", "/actions", {"action_type": "InstanceStart"})
    assert status == 400 and body["fault_message"].startswith("Cannot start the microVM: boot-source")
    assert call(sock, "GET", "/")[1]["state"] == "Not started"


@pytest.mark.parametrize(("args", "code", "needle"), [
    (["--no-api"], 2, "--no-api needs --config-file"),
    (["--id", "bad id!"], 2, "--id 'bad id!'"),
    (["--http-api-max-payload-size", "0"], 2, "--http-api-max-payload-size"),
    (["--no-api", "--config-file", "/nonexistent.json"], 2, "config file /nonexistent.json: cannot read it"),
])
def test_bad_flags_are_one_line_errors(args: list[str], code: int, needle: str, tmp_path: Path) -> None:
    result = subprocess.run(_vmm("--api-sock", str(tmp_path / "s"), *args), env=_env(), capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == code
    assert needle in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "s").exists()


def test_invalid_config_file_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "vm.json"
    path.write_text(json.dumps({"machine-config": {"vcpu_count": 0, "mem_size_mib": 128}}))
    result = subprocess.run(_vmm("--no-api", "--config-file", str(path)), env=_env(), capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"firelet-vmm: error: config file {path}: "
                                     "machine-config.vcpu_count: expected int >= 1, got 0")


def test_config_file_with_a_missing_kernel_fails_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "vm.json"
    path.write_text(json.dumps({"boot-source": {"kernel_image_path": str(tmp_path / "missing-vmlinux")},
                                "machine-config": {"vcpu_count": 1, "mem_size_mib": 128}}))
    sock = tmp_path / "api.sock"
    result = subprocess.run(_vmm("--api-sock", str(sock), "--config-file", str(path)), env=_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("firelet-vmm: error: config file: boot-source: Boot source error: "
                                    "The kernel file cannot be opened")
    assert not sock.exists()


def test_version_flag() -> None:
    result = subprocess.run(_vmm("--version"), env=_env(), capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.startswith("firelet 0.1.0 (Firecracker API ")


class _Loop:
    """A backend's submit(): runs the call at once, as the event loop would."""

    def __init__(self, vmm: object) -> None:
        self.vmm = vmm

    def submit(self, fn):
        from concurrent.futures import Future

        future: Future[object] = Future()
        try:
            future.set_result(fn())
        except Exception as exc:
            future.set_exception(exc)
        return future


def test_sigusr2_vcpu_report_comes_from_the_event_loop_and_never_fails(capsys: pytest.CaptureFixture[str]) -> None:
    from types import SimpleNamespace

    from firelet.cli import vmm as cli

    cli._report_vcpus(None)  # no VM yet: the stacks alone
    cli._report_vcpus(SimpleNamespace(vmm=None))
    assert capsys.readouterr().err == ""
    cli._report_vcpus(_Loop(SimpleNamespace(describe_vcpus=lambda: ["vCPU 0: rip=0x1", "vCPU 1: rip=0x2"])))
    assert capsys.readouterr().err == "firelet-vmm: vCPU 0: rip=0x1\nfirelet-vmm: vCPU 1: rip=0x2\n"

    def stuck() -> list[str]:
        raise TimeoutError("vCPUs did not stop within 5 s")

    cli._report_vcpus(_Loop(SimpleNamespace(describe_vcpus=stuck)))
    assert capsys.readouterr().err == "firelet-vmm: vCPU state unavailable (TimeoutError: vCPUs did not stop within 5 s)\n"


def test_a_logger_set_through_the_api_keeps_its_lines_off_stderr(tmp_path: Path) -> None:
    """Info and debug lines go to the configured log only: a client that never reads the VMM's
    stderr must not fill that pipe and stall the VMM."""
    sock, log = tmp_path / "api.sock", tmp_path / "vmm.log"
    proc = subprocess.Popen(_vmm("--api-sock", str(sock), "--no-seccomp"), env=_env(), stderr=subprocess.PIPE)
    try:
        wait_for_api(sock, proc)
        assert call(sock, "PUT", "/logger", {"log_path": str(log), "level": "Debug"})[0] == 204
        for _ in range(3):
            call(sock, "GET", "/machine-config")
        assert call(sock, "PUT", "/boot-source", {"kernel_image_path": str(tmp_path / "missing")})[0] == 400
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    assert log.read_text().strip(), "the configured log got nothing"
    assert not [line for line in stderr.decode().splitlines() if " INFO " in line or " DEBUG " in line], stderr
