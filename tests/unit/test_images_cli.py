"""``firelet build``: output lines, usage errors, exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from firelet.cli.main import main


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FIRELET_CACHE", str(tmp_path))
    return tmp_path


def test_build_without_target_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("firelet: error:") and err.count("\n") == 1


def test_bad_rootfs_size_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", "rootfs", "--size-mib", "1"]) == 2
    assert capsys.readouterr().err == "firelet: error: rootfs size must be 8..65536 MiB, not 1\n"


def test_bad_jobs_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", "kernel", "--jobs", "0"]) == 2
    assert "--jobs" in capsys.readouterr().err


def test_build_rootfs_and_initramfs_print_their_paths(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", "rootfs", "--size-mib", "16"]) == 0
    assert main(["build", "initramfs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(": ")[0] for line in lines] == ["rootfs", "initramfs"]
    for line in lines:
        path = Path(line.split(": ", 1)[1])
        assert path.is_file() and path.parent == cache / "rootfs"
