"""A full boot driven only through the API socket, and the same VM from --config-file (issue #4).

Runs in the nested rig (real KVM). Passes once the VMM implements the backend.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from firelet.devtools.cache import repo_root
from firelet.devtools.images import guest_cmdline_for

from conftest import BOOT_TIMEOUT_S, api_ok, read_until

MARKER = "hello-from-the-api"
#: The guest prints the marker and then stays up, so that pause/resume and Ctrl-Alt-Del act on a live VM.
GUEST_CMD = f"echo {MARKER}; sleep 600"




def _wait_for(predicate: Any, what: str, timeout: float = BOOT_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _vm_config(kernel: Any, rootfs: Path, serial_out: Path) -> dict[str, Any]:
    return {
        "boot-source": {"kernel_image_path": str(kernel.vmlinux),
                        "boot_args": f"console=ttyS0 reboot=k panic=-1 {guest_cmdline_for(GUEST_CMD)}"},
        "drives": [{"drive_id": "rootfs", "path_on_host": str(rootfs), "is_root_device": True, "is_read_only": False}],
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 256},
        "serial": {"serial_out_path": str(serial_out)},
    }


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(repo_root()) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _serial_text(path: Path) -> str:
    return path.read_text(errors="replace").replace("\r", "") if path.exists() else ""


def test_full_boot_through_the_api_socket(kernel, rootfs: Path, tmp_path: Path) -> None:
    sock, serial_out = tmp_path / "api.sock", tmp_path / "serial.out"
    config = _vm_config(kernel, rootfs, serial_out)
    proc = subprocess.Popen([sys.executable, "-m", "firelet.cli.vmm", "--api-sock", str(sock), "--id", "api-boot"],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for(sock.exists, "the API socket", timeout=60)
        api_ok(sock, "PUT", "/boot-source", config["boot-source"])
        api_ok(sock, "PUT", "/drives/rootfs", config["drives"][0])
        api_ok(sock, "PUT", "/machine-config", config["machine-config"])
        api_ok(sock, "PUT", "/serial", config["serial"])
        api_ok(sock, "PUT", "/actions", {"action_type": "InstanceStart"})
        assert api_ok(sock, "GET", "/")["state"] == "Running"
        _wait_for(lambda: MARKER in _serial_text(serial_out), "the guest's marker on the serial console")

        api_ok(sock, "PATCH", "/vm", {"state": "Paused"})
        assert api_ok(sock, "GET", "/")["state"] == "Paused"
        api_ok(sock, "PATCH", "/vm", {"state": "Resumed"})
        assert api_ok(sock, "GET", "/")["state"] == "Running"
        proc.send_signal(signal.SIGUSR2)  # a stuck-VMM report: thread stacks, then vCPU registers
        report = read_until(proc.stderr.fileno(), b"firelet-vmm: vCPU 0: rip=", 60).decode()
        assert "most recent call first" in report and "cr3=" in report.rsplit("vCPU 0: rip=", 1)[1]
        assert api_ok(sock, "GET", "/")["state"] == "Running"  # paused only for the report
        exported = api_ok(sock, "GET", "/vm/config")
        assert exported["drives"][0]["path_on_host"] == str(rootfs)

        api_ok(sock, "PUT", "/actions", {"action_type": "SendCtrlAltDel"})
        code = proc.wait(BOOT_TIMEOUT_S)
        assert code == 0, proc.stderr.read().decode() if proc.stderr else ""
        assert not sock.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_same_configuration_boots_from_config_file(kernel, rootfs: Path, tmp_path: Path) -> None:
    serial_out = tmp_path / "serial.out"
    config = _vm_config(kernel, rootfs, serial_out)
    config["boot-source"]["boot_args"] = "console=ttyS0 reboot=k panic=-1 " + guest_cmdline_for(f"echo {MARKER}")
    config_path = tmp_path / "vm.json"
    config_path.write_text(json.dumps(config))
    result = subprocess.run([sys.executable, "-m", "firelet.cli.vmm", "--no-api", "--config-file", str(config_path)],
                            env=_env(), capture_output=True, text=True, timeout=BOOT_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    assert MARKER in _serial_text(serial_out)
    assert "FIRELET-EXIT status=0" in _serial_text(serial_out)


BOOT_TIME = re.compile(r"Guest-boot-time =\s+(\d+) us (\d+) ms,\s+(\d+) CPU us (\d+) CPU ms")


def _boot_signalling_the_timer(kernel: Any, rootfs: Path, tmp_path: Path, *flags: str) -> tuple[str, str]:
    """Boot from --config-file with the guest writing the boot-complete byte; (serial text, VMM log)."""
    serial_out, log = tmp_path / "serial.out", tmp_path / "vmm.log"
    config = _vm_config(kernel, rootfs, serial_out)
    config["boot-source"]["boot_args"] = ("console=ttyS0 reboot=k panic=-1 "
                                          + guest_cmdline_for("devmem 0xd0000000 8 123 && echo signalled"))
    config_path = tmp_path / "vm.json"
    config_path.write_text(json.dumps(config))
    result = subprocess.run([sys.executable, "-m", "firelet.cli.vmm", "--no-api", "--config-file", str(config_path),
                             "--log-path", str(log), "--level", "Info", *flags],
                            env=_env(), capture_output=True, text=True, timeout=BOOT_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    return _serial_text(serial_out), log.read_text()


def test_boot_timer_logs_the_guests_boot_time(kernel, rootfs: Path, tmp_path: Path) -> None:
    # Firecracker's --boot-timer: the timer holds the first MMIO window, so the root disk
    # (the guest booted from it) moved to the next one
    serial, log = _boot_signalling_the_timer(kernel, rootfs, tmp_path, "--boot-timer")
    assert "signalled" in serial and "FIRELET-EXIT status=0" in serial
    found = BOOT_TIME.findall(log)
    assert len(found) == 1, log
    wall_us, wall_ms, cpu_us, cpu_ms = map(int, found[0])
    assert wall_us > 0 and wall_ms == wall_us // 1000 and cpu_ms == cpu_us // 1000
    assert cpu_us < wall_us * 2  # the VMM's CPU time, two threads at most busy at once


def test_without_the_boot_timer_the_byte_reaches_the_disk_window_harmlessly(kernel, rootfs: Path,
                                                                           tmp_path: Path) -> None:
    # a guest poking the first virtio window's read-only magic register: ignored, no boot time
    serial, log = _boot_signalling_the_timer(kernel, rootfs, tmp_path)
    assert "signalled" in serial and "FIRELET-EXIT status=0" in serial
    assert "Guest-boot-time" not in log
