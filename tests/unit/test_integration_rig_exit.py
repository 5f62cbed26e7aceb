"""The integration tests' verdict on a stuck guest: a vCPU in an impossible state ends the session with 125."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from firelet.vstate.vcpu import IMPOSSIBLE_STATE

INTEGRATION = Path(__file__).resolve().parent.parent / "integration"
sys.path.insert(0, str(INTEGRATION))
import qemu_state  # noqa: E402

MiB = 1 << 20


def _session(tmp_path: Path, report: str) -> subprocess.CompletedProcess[str]:
    test = tmp_path / "test_stuck.py"
    test.write_text(
        f"import sys\nsys.path.insert(0, {str(INTEGRATION)!r})\n"
        "from conftest import exit_if_the_rig_corrupted_a_vcpu\n\n"
        f"def test_stuck():\n    exit_if_the_rig_corrupted_a_vcpu({report!r})\n    assert False, 'stuck'\n"
    )
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)],
                          capture_output=True, text=True, cwd=tmp_path)


def test_a_corrupted_vcpu_ends_the_session_as_a_rig_failure(tmp_path: Path) -> None:
    result = _session(tmp_path, f"vCPU 0: rip=0xffffffffc043e20c cr3=0x1028be000 ({IMPOSSIBLE_STATE}: cr3 ...)")
    assert result.returncode == 125, result.stdout
    assert "the rig corrupted a guest vCPU" in result.stdout


def test_any_other_stuck_guest_stays_a_test_failure(tmp_path: Path) -> None:
    result = _session(tmp_path, "vCPU 0: rip=0xffffffff81000000 cr3=0x9000 mp_state=0")
    assert result.returncode == 1, result.stdout
    assert "stuck" in result.stdout


#: HMP's ``info registers -a`` for a two-vCPU QEMU microvm guest, trimmed (a real reply's shape).
_INFO_REGISTERS = """
CPU#0
RAX=0000000000052b7e RBX=0000000000000dac RCX=0000000000180000 RDX=000000000005f3b9
RSI=ffff888002087dc8 RDI=000000000005f3ba RBP=ffff888002087ec8 RSP=ffff888002087e58
RIP=ffffffff81378740 RFL=00000202 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=0
CS =0010 0000000000000000 ffffffff 00af9b00 DPL=0 CS64 [-RA]
CR0=80050033 CR2=ffff888001e00000 CR3=0000000001a0a000 CR4=000006b0
EFER=0000000000000d01

CPU#1
RSI=00000000000000ff RDI=00000000000000f0 RBP=0000000000000001 RSP=ffff888007b05fd8
RIP=ffffffffc043e20c RFL=00000046 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1
CR0=80050033 CR2=0000000000000000 CR3=00000001028be000 CR4=000006b0
"""


def test_qemu_registers_are_judged_like_firelets() -> None:
    cpus = qemu_state.parse_info_registers(_INFO_REGISTERS)
    assert cpus == [
        {"RSP": 0xFFFF888002087E58, "RIP": 0xFFFFFFFF81378740, "CR0": 0x80050033, "CR3": 0x1A0A000},
        {"RSP": 0xFFFF888007B05FD8, "RIP": 0xFFFFFFFFC043E20C, "CR0": 0x80050033, "CR3": 0x1028BE000},
    ]
    lines = qemu_state.describe(cpus, qemu_state.LowRam(128 * MiB))
    assert lines[0] == "vCPU 0: rip=0xffffffff81378740 rsp=0xffff888002087e58 cr3=0x1a0a000"
    assert lines[1].startswith("vCPU 1: rip=0xffffffffc043e20c") and IMPOSSIBLE_STATE in lines[1]


def test_no_qemu_monitor_is_a_report_not_an_error(tmp_path: Path) -> None:
    report = qemu_state.describe_qemu_vcpus(str(tmp_path / "nobody.sock"), 128)
    assert report.startswith("vCPU state unavailable (")
    assert IMPOSSIBLE_STATE not in report
