"""The README's Python example runs as written, and its quick-start command boots the demo."""

from __future__ import annotations

import re
import subprocess
import sys

from firelet.devtools.cache import repo_root

from conftest import BOOT_TIMEOUT_S, firelet_cli


def _python_blocks() -> list[str]:
    text = (repo_root() / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_readme_python_example_boots_and_prints_the_guest_output() -> None:
    blocks = _python_blocks()
    assert blocks, "the README has no Python example"
    result = subprocess.run([sys.executable, "-c", blocks[0]], capture_output=True, text=True,
                            timeout=BOOT_TIMEOUT_S, cwd=repo_root())
    assert result.returncode == 0, result.stderr[-2000:]
    assert "guest reset" in result.stdout  # how the VM ended
    assert "Linux firelet" in result.stdout  # `uname -a` ran in the guest


def test_demo_runs_a_command_and_exits_cleanly() -> None:
    result = firelet_cli("demo", "--cmd", "echo demo-ok; grep -c ^processor /proc/cpuinfo")
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout.replace("\r", "")
    assert "demo-ok\n2\n" in out  # the demo's default of 2 vCPUs
