"""The guest init script: syntax, and its command-running part on the host."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from firelet.cache import repo_root
from firelet.images import guest_cmdline_for, parse_exit_status
from firelet.images.rootfs import INIT_PATH, find_busybox

INIT = repo_root() / INIT_PATH


def _run_init(tmp_path: Path, cmdline: str) -> subprocess.CompletedProcess[str]:
    """Run the init as a normal process (not PID 1): it only runs the command part."""
    (tmp_path / "cmdline").write_text(cmdline + "\n")
    env = dict(os.environ, FIRELET_CMDLINE=str(tmp_path / "cmdline"))
    return subprocess.run([str(find_busybox()), "sh", str(INIT)], env=env, cwd=tmp_path,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                          timeout=30)


def test_init_is_valid_busybox_sh() -> None:
    subprocess.run([str(find_busybox()), "sh", "-n", str(INIT)], check=True)
    assert os.access(INIT, os.X_OK)
    assert INIT.read_text().startswith("#!/bin/sh\n")


def test_init_runs_the_command_and_reports_its_status(tmp_path: Path) -> None:
    command = "echo \"hello 'quoted' $((6 * 7))\"; printf 'two\\nlines\\n'; exit 3"
    result = _run_init(tmp_path, f"console=ttyS0 reboot=k {guest_cmdline_for(command)} ro")
    assert "hello 'quoted' 42\ntwo\nlines\n" in result.stdout
    assert parse_exit_status(result.stdout) == 3
    assert result.returncode == 3


@pytest.mark.parametrize("status", [0, 1, 255])
def test_init_reports_exit_statuses(tmp_path: Path, status: int) -> None:
    result = _run_init(tmp_path, guest_cmdline_for(f"exit {status}"))
    assert parse_exit_status(result.stdout) == status


def test_init_with_bad_base64_reports_failure(tmp_path: Path) -> None:
    result = _run_init(tmp_path, "quiet firelet.cmd=%%%not-base64%%%")
    assert "not valid base64" in result.stdout
    assert parse_exit_status(result.stdout) == 2


def test_init_without_command_does_nothing_off_pid1(tmp_path: Path) -> None:
    result = _run_init(tmp_path, "console=ttyS0 quiet")
    assert result.returncode == 0
    assert "nothing to do" in result.stdout
    assert parse_exit_status(result.stdout) is None


def test_init_does_not_glob_the_command_line(tmp_path: Path) -> None:
    (tmp_path / "firelet.cmd=ZXhpdCA5").write_text("")  # a file a glob could expand to
    result = _run_init(tmp_path, "firelet.cmd=* " + guest_cmdline_for("exit 4"))
    assert parse_exit_status(result.stdout) == 4
