"""A rig whose kernel hangs is noticed by its silent heartbeat, not by the long --timeout."""

from __future__ import annotations

from pathlib import Path

import pytest

from firelet.devtools.nested import runner
from firelet.devtools.nested.qemu import outer_qemu_argv


def test_heartbeat_must_keep_growing_once_it_began(tmp_path: Path) -> None:
    path = tmp_path / "heartbeat"
    beat = runner._Heartbeat(path)
    beat.check(0.0)  # no file yet: the rig is still booting, which is not a hang
    beat.check(10_000.0)
    path.write_bytes(b"\r\n")
    beat.check(10_000.0)
    beat.check(10_000.0 + runner.HEARTBEAT_TIMEOUT_S)  # exactly the limit: still fine
    path.write_bytes(b"\r\n\r\n")
    beat.check(10_000.0 + 2 * runner.HEARTBEAT_TIMEOUT_S)  # grew: the clock restarts
    with pytest.raises(runner._Hung):
        beat.check(10_001.0 + 3 * runner.HEARTBEAT_TIMEOUT_S)


def test_a_hung_rig_is_a_rig_failure_with_its_exit_status() -> None:
    assert issubclass(runner.RigHung, runner.RigFailed)
    assert runner.RigHung("x").exit_code == runner.EXIT_RIG_FAILED == 125


def test_the_heartbeat_file_is_the_outer_machines_second_serial_port(tmp_path: Path) -> None:
    argv = outer_qemu_argv(kernel=tmp_path / "k", initrd=tmp_path / "i", cmdline="c", mem_mib=256, smp=1,
                           shares=[], heartbeat=str(tmp_path / "hb"))
    serials = [argv[i + 1] for i, a in enumerate(argv) if a == "-serial"]
    assert serials == ["chardev:s0", "chardev:hb"]
    assert f"file,id=hb,path={tmp_path / 'hb'}" in argv
