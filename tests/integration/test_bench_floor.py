"""The benchmark's floor (bench/python_floor.py) really enters a guest on the rig's KVM.

first_entry.py times it from KVM's tracepoint; this proves that what it times is
a real guest entry made by nothing but the interpreter and the KVM calls.
"""

from __future__ import annotations

import subprocess
import sys

from firelet.devtools.cache import repo_root

FLOOR = repo_root() / "bench" / "python_floor.py"
KVM_EXIT_UNKNOWN = 0  # include/uapi/linux/kvm.h


def _floor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(FLOOR), *args], capture_output=True, text=True, timeout=120)


def test_floor_enters_the_guest_once_and_reports_kvms_exit(kernel) -> None:
    result = _floor("-v", str(kernel.vmlinux))
    assert result.returncode == 0, result.stderr
    reason = int(result.stdout.rsplit(" ", 1)[1])
    assert reason != KVM_EXIT_UNKNOWN, result.stdout


def test_floor_with_imports_still_enters_the_guest(kernel) -> None:
    result = _floor("-v", "--import", "msgspec,threading", str(kernel.vmlinux), "64")
    assert result.returncode == 0, result.stderr
    assert "KVM exit reason" in result.stdout


def test_floor_refuses_a_missing_kernel_in_one_line() -> None:
    result = _floor("/nonexistent/vmlinux")
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and "No such file" in result.stderr
