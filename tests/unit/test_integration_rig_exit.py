"""The integration tests' verdict on a stuck guest: a vCPU in an impossible state ends the session with 125."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from firelet.vmm.vcpu import IMPOSSIBLE_STATE

INTEGRATION = Path(__file__).resolve().parent.parent / "integration"


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
