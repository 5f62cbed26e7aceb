"""The guest init script: syntax, and its command-running part on the host."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from firelet.devtools.cache import repo_root
from firelet.devtools.images import guest_cmdline_for, parse_exit_status
from firelet.devtools.images.rootfs import INIT_PATH, _applets, find_busybox

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


_SHELL_WORDS = {
    "if", "then", "else", "elif", "fi", "for", "in", "do", "done", "case", "esac", "while",
    "until", "set", "export", "read", "echo", "exit", "wait", "printf", "exec", "local",
    "return", "shift", "true", "false", "cd", "[", ":", "!",
}

# Words after which the next word is a command too.
_PREFIXES = {"then", "else", "do", "!", "exec", "setsid", "cttyhack"}


def commands_used(script: str) -> set[str]:
    """The external commands a shell script runs (first words of simple commands)."""
    names: set[str] = set()
    functions = set(re.findall(r"^\s*([a-z_][a-z0-9_]*)\(\)", script, re.MULTILINE))
    for line in script.splitlines():
        if line.lstrip().startswith("#"):
            continue
        line = re.sub(r"\$\{[^}]*\}|\$[\w!?$#@*]", "", line)
        line = re.sub(r"\"[^\"]*\"|'[^']*'", "''", line).split(" #")[0]
        line = re.sub(r"^\s*[^ ()]+\)", "", line)  # a case pattern
        for segment in re.split(r"\|\||&&|[;|&{}()`]|\$\(", line):
            words = [word for word in segment.split() if "=" not in word or word.startswith("-")]
            while words and words[0] in _PREFIXES:  # `then cmd`, `setsid cmd`...
                names.add(words.pop(0))
            if words and re.fullmatch(r"[a-z][a-z0-9_.-]*|\[", words[0]):
                names.add(words[0])
    return names - _SHELL_WORDS - functions


def test_every_command_init_runs_is_a_busybox_applet() -> None:
    used = commands_used(INIT.read_text())
    assert {"mount", "base64", "setsid", "cttyhack", "reboot", "sync", "grep"} <= used
    applets = {path.rpartition("/")[2] for path in _applets(find_busybox())}
    assert used - applets == set()


def test_command_scan_notices_a_missing_applet() -> None:
    script = "#!/bin/sh\nmountpoint -q /proc || mount -t proc proc /proc\nx=1; frobnicate --now\n"
    assert commands_used(script) == {"mountpoint", "mount", "frobnicate"}
    assert commands_used("while :; do nap 1; done\nsetsid cttyhack zsh\n") == {"nap", "setsid", "cttyhack", "zsh"}
