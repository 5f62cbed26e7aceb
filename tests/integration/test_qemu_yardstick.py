"""The yardstick boots: QEMU microvm runs the guest kernel + rootfs and a command in it (the rig issue)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import BOOT_TIMEOUT_S

from firelet.cache import repo_root
from firelet.images import guest_cmdline_for, parse_exit_status

sys.path.insert(0, str(repo_root() / "bench"))
from launchers import BootInputs, QemuMicrovm  # noqa: E402


def _qemu_boot(kernel, rootfs: Path, command: str) -> tuple[int, str]:  # noqa: ANN001
    cmdline = f"console=ttyS0 reboot=k panic=-1 root=/dev/vda rw {guest_cmdline_for(command)}"
    argv = QemuMicrovm().argv(BootInputs(vmlinux=kernel.vmlinux, rootfs=rootfs, cmdline=cmdline))
    try:
        result = subprocess.run(argv, capture_output=True, timeout=BOOT_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:  # show where the guest stopped (its log is on the console)
        out = (exc.stdout or b"").decode(errors="replace").replace("\r", "")
        raise AssertionError(f"QEMU did not end within {BOOT_TIMEOUT_S} s; console tail:\n{out[-3000:]}") from None
    return result.returncode, result.stdout.decode(errors="replace").replace("\r", "")


def test_qemu_microvm_runs_a_command_and_reports_its_status(kernel, rootfs: Path) -> None:
    code, out = _qemu_boot(kernel, rootfs, "echo from-qemu-$((40+2)); exit 7")
    assert code == 0, out[-2000:]  # -no-reboot: the guest's reset ends QEMU cleanly
    assert "from-qemu-42" in out
    assert parse_exit_status(out) == 7
