"""`firelet nested` end to end on this host: output, exit status, timeout (boots the rig: ~10 s)."""

from __future__ import annotations

import subprocess
import sys


def _nested(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "firelet", "nested", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_streams_output_and_returns_the_commands_status() -> None:
    result = _nested("--", "sh", "-c", "echo hello-from-the-rig; test -c /dev/kvm && exit 3")
    assert "hello-from-the-rig" in result.stdout
    assert result.returncode == 3, result.stderr


def test_timeout_is_enforced_and_reported() -> None:
    result = _nested("--timeout", "20", "--", "sleep", "600")
    assert result.returncode == 124
    assert "Traceback" not in result.stderr
    assert "timed out" in result.stderr or "timeout" in result.stderr.lower()
