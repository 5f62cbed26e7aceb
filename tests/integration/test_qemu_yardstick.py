"""The yardstick boots: QEMU microvm runs the guest kernel + rootfs and a command in it (the rig issue)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from firelet.devtools.cache import repo_root
from firelet.devtools.images import guest_cmdline_for, parse_exit_status
from firelet.vstate.vcpu import IMPOSSIBLE_STATE

from conftest import BOOT_TIMEOUT_S, exit_if_the_rig_corrupted_a_vcpu
from qemu_state import describe_qemu_vcpus

sys.path.insert(0, str(repo_root() / "bench"))
from launchers import BootInputs, QemuMicrovm


def _qemu_boot(kernel, rootfs: Path, command: str, tmp_path: Path) -> tuple[int, str]:
    cmdline = f"console=ttyS0 reboot=k panic=-1 root=/dev/vda rw {guest_cmdline_for(command)}"
    boot = BootInputs(vmlinux=kernel.vmlinux, rootfs=rootfs, cmdline=cmdline)
    qmp = tmp_path / "qmp.sock"  # to ask a stuck guest's registers
    argv = [*QemuMicrovm().argv(boot), "-qmp", f"unix:{qmp},server=on,wait=off"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        out, _err = proc.communicate(timeout=BOOT_TIMEOUT_S)
    except subprocess.TimeoutExpired:  # show where the guest stopped: its registers, its console's tail
        report = describe_qemu_vcpus(str(qmp), boot.mem_mib)
        proc.kill()
        out, _err = proc.communicate()
        exit_if_the_rig_corrupted_a_vcpu(report)
        tail = out.decode(errors="replace").replace("\r", "")[-3000:]
        raise AssertionError(f"QEMU did not end within {BOOT_TIMEOUT_S} s\n{report}\nconsole tail:\n{tail}") from None
    return proc.returncode, out.decode(errors="replace").replace("\r", "")


def test_qemu_microvm_runs_a_command_and_reports_its_status(kernel, rootfs: Path, tmp_path: Path) -> None:
    code, out = _qemu_boot(kernel, rootfs, "echo from-qemu-$((40+2)); exit 7", tmp_path)
    assert code == 0, out[-2000:]  # -no-reboot: the guest's reset ends QEMU cleanly
    assert "from-qemu-42" in out
    assert parse_exit_status(out) == 7


def test_a_running_qemu_guests_registers_come_through_qmp(kernel, rootfs: Path, tmp_path: Path) -> None:
    # what a stuck yardstick boot reports: here for a guest that runs on fine
    cmdline = f"console=ttyS0 reboot=k panic=-1 root=/dev/vda ro {guest_cmdline_for('sleep 600')}"
    boot = BootInputs(vmlinux=kernel.vmlinux, rootfs=rootfs, cmdline=cmdline)
    qmp = tmp_path / "qmp.sock"
    argv = [*QemuMicrovm().argv(boot), "-qmp", f"unix:{qmp},server=on,wait=off"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        report = ""
        while time.monotonic() < deadline and "rip=0xffffffff" not in report:  # in the guest kernel
            time.sleep(0.5)
            report = describe_qemu_vcpus(str(qmp), boot.mem_mib)
    finally:
        proc.kill()
        proc.communicate()
    assert report.startswith("vCPU 0: rip=0xffffffff"), report
    assert "cr3=" in report and IMPOSSIBLE_STATE not in report
