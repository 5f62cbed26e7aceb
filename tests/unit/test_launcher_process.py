"""A real launcher process forking real firelet-vmm children (API only: no VM is started)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from firelet.launcher import procinfo
from firelet.launcher.client import Launcher
from firelet.launcher.socket_path import LauncherError

from api_fake_backend import call
from launcher_utils import ended, running_launcher, short_workdir

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def workdir() -> Iterator[Path]:
    yield from short_workdir()


@pytest.fixture
def launcher(workdir: Path) -> Iterator[Launcher]:
    yield from running_launcher(workdir)


def _api_argv(workdir: Path, vm_id: str) -> list[str]:
    return ["--api-sock", str(workdir / f"{vm_id}.sock"), "--id", vm_id]


def _wait_api(path: Path, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status, body = call(path, "GET", "/")
            assert status == 200
            return body
        except OSError:
            time.sleep(0.01)
    raise AssertionError(f"{path} never answered")


def _socket_inodes(pid: int) -> set[str]:
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found


def _gone(pid: int) -> bool:
    return not os.path.exists(f"/proc/{pid}")


def test_ten_vmms_answer_survive_a_sibling_killed_and_stop_leaving_nothing(launcher: Launcher, workdir: Path) -> None:
    assert launcher.process is not None
    lpid = launcher.process.pid
    launcher.ping()
    fds_before = procinfo.fd_count(lpid)
    ids = [f"vm-{i}" for i in range(10)]
    pids = {vm_id: launcher.launch(vm_id, _api_argv(workdir, vm_id), stdout=str(workdir / f"{vm_id}.out"),
                                   stderr=str(workdir / f"{vm_id}.err")) for vm_id in ids}
    for vm_id in ids:
        assert _wait_api(workdir / f"{vm_id}.sock")["id"] == vm_id
    listed = {vm["id"]: vm for vm in launcher.list()}
    assert sorted(listed) == sorted(ids)
    for vm_id, vm in listed.items():
        assert (vm["pid"], vm["state"]) == (pids[vm_id], "running")
        assert vm["rss_kib"] >= vm["uss_kib"] > 0
        with open(f"/proc/{vm['pid']}/comm") as comm:
            assert comm.read().strip() == "firelet-vmm"
    # The children hold none of the launcher's sockets (its listener, its clients' connections).
    assert not _socket_inodes(lpid) & _socket_inodes(pids["vm-0"])

    os.kill(pids["vm-3"], signal.SIGKILL)
    (killed,) = launcher.wait("vm-3", timeout_s=30)
    assert (killed["state"], killed["exit_signal"]) == ("killed", "SIGKILL")
    assert launcher.ping()["children"] == 9
    for vm_id in ids:
        if vm_id != "vm-3":
            assert _wait_api(workdir / f"{vm_id}.sock")["id"] == vm_id

    assert sorted(launcher.stop()) == sorted(i for i in ids if i != "vm-3")
    ended = {vm["id"]: vm for vm in launcher.wait(timeout_s=60)}
    assert all(ended[i]["state"] == "exited" and ended[i]["exit_code"] == 0 for i in ids if i != "vm-3")
    assert len(launcher.reap()) == 10
    assert launcher.list() == []
    assert all(_gone(pid) for pid in pids.values())
    # Each VMM that ended cleanly removed its API socket; SIGKILL gave vm-3 no chance to.
    assert sorted(p.name for p in workdir.glob("*.sock")) == ["launcher.sock", "vm-3.sock"]
    assert procinfo.fd_count(lpid) == fds_before


def test_soak_200_vmms_in_batches_leave_the_launchers_fds_and_rss_flat(launcher: Launcher, workdir: Path) -> None:
    assert launcher.process is not None
    lpid = launcher.process.pid

    def batch(start: int, count: int) -> None:
        ids = [f"soak-{i}" for i in range(start, start + count)]
        for vm_id in ids:
            launcher.launch(vm_id, _api_argv(workdir, vm_id), stdout="null", stderr="null")
        for vm_id in ids:
            _wait_api(workdir / f"{vm_id}.sock")
        launcher.stop()
        assert all(vm["exit_code"] == 0 for vm in launcher.wait(timeout_s=120))
        assert len(launcher.reap()) == count

    batch(0, 20)  # the first batch settles the launcher's own allocations
    fds, (rss, _) = procinfo.fd_count(lpid), procinfo.memory_kib(lpid)
    for start in range(20, 200, 20):
        batch(start, 20)
    assert procinfo.fd_count(lpid) == fds
    assert procinfo.memory_kib(lpid)[0] < rss + 8 * 1024  # KiB: a generous band, not a measurement
    assert list(workdir.glob("soak-*")) == []


def test_a_bad_config_fails_that_vmm_with_its_one_line_error(launcher: Launcher, workdir: Path) -> None:
    config = workdir / "bad.json"
    config.write_text('{"machine-config": {"vcpu_count": 0, "mem_size_mib": 128}}')
    launcher.launch("bad", ["--config-file", str(config), "--no-api"], stderr=str(workdir / "bad.err"))
    launcher.launch("good", _api_argv(workdir, "good"), stderr="null")
    (record,) = launcher.wait("bad", timeout_s=30)
    assert record["state"] == "exited" and record["exit_code"] != 0
    assert record["error"].startswith("firelet-vmm: error: config file")
    assert "vcpu_count" in record["error"]
    assert _wait_api(workdir / "good.sock")["id"] == "good"  # the others are unaffected
    assert launcher.ping()["children"] == 1


def test_bad_arguments_exit_the_child_as_firelet_vmm_would(launcher: Launcher, workdir: Path) -> None:
    launcher.launch("args", ["--no-such-flag"], stderr=str(workdir / "args.err"))
    (record,) = launcher.wait("args", timeout_s=30)
    assert record["exit_code"] == 2  # argparse's usage error, not the launcher's loop
    assert "unrecognized arguments: --no-such-flag" in record["error"]
    assert launcher.ping()["children"] == 0


def test_refusals_are_one_line_and_the_connection_goes_on(launcher: Launcher, workdir: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.settimeout(10)
        raw.connect(launcher.socket_path)
        stream = raw.makefile("rb")
        for line, expected in ((b"{not json\n", b"malformed JSON"), (b'{"op": "fly"}\n', b"unknown op 'fly'"),
                               (b'{"op": "stop", "id": "ghost"}\n', b"no VM with id 'ghost'")):
            raw.sendall(line)
            reply = stream.readline()
            assert reply.startswith(b'{"ok":false,"error":') and expected in reply
        raw.sendall(b'{"op": "ping"}\n')
        assert stream.readline().startswith(b'{"ok":true,"op":"ping"')
    with pytest.raises(LauncherError, match=r"stdout /nonexistent/dir/out: cannot open it: No such file"):
        launcher.launch("x", [], stdout="/nonexistent/dir/out")
    launcher.launch("dup", _api_argv(workdir, "dup"), stderr="null")
    with pytest.raises(LauncherError, match=r"launch dup: that id is in use \(pid \d+\)"):
        launcher.launch("dup", _api_argv(workdir, "dup"))
    assert launcher.ping()["children"] == 1


def _run_launcher(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "firelet", "launcher", "--socket", str(path)], capture_output=True,
                          text=True, timeout=60, cwd=REPO)


def test_a_socket_path_in_use_is_refused_and_a_stale_one_is_taken(launcher: Launcher, workdir: Path) -> None:
    done = _run_launcher(Path(launcher.socket_path))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"firelet: error: --socket {launcher.socket_path}: a launcher is already listening there; stop it "
        "(firelet fleet stop --all) or choose another path"]
    with pytest.raises(LauncherError, match=r"the launcher for .* exited at start \(status 1\); see "):
        Launcher.start(launcher.socket_path, log_path=workdir / "second.log")
    assert "a launcher is already listening there" in (workdir / "second.log").read_text()
    plain = workdir / "plain"
    plain.write_text("")
    done = _run_launcher(plain)
    assert (done.returncode, done.stderr.strip()) == (
        1, f"firelet: error: --socket {plain}: exists and is not a socket; remove it or choose another path")
    stale = workdir / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(stale))  # bound, never listening, then closed: what a killed launcher leaves
    second = Launcher.start(stale)
    try:
        assert second.ping()["children"] == 0
    finally:
        second.close()
    assert not stale.exists()
    assert launcher.ping()["children"] == 0  # the first launcher never noticed


def test_sigterm_stops_the_launcher_and_its_vmms_and_removes_its_socket(launcher: Launcher, workdir: Path) -> None:
    assert launcher.process is not None
    pids = [launcher.launch(f"t-{i}", _api_argv(workdir, f"t-{i}"), stderr="null") for i in range(3)]
    for i in range(3):
        _wait_api(workdir / f"t-{i}.sock")
    launcher.process.send_signal(signal.SIGTERM)
    assert launcher.process.wait(timeout=60) == 0
    deadline = time.monotonic() + 10
    while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert all(_gone(pid) for pid in pids)  # stopped and reaped by the launcher
    assert sorted(workdir.glob("*.sock")) == []


def test_a_shutdown_asked_to_leave_the_vmms_running_says_so(launcher: Launcher, workdir: Path) -> None:
    pid = launcher.launch("stay", _api_argv(workdir, "stay"), stderr="null")
    _wait_api(workdir / "stay.sock")
    reply = launcher.shutdown(leave_running=True)
    assert reply["left_running"] == {"stay": pid}
    assert "1 VMM(s) left running" in reply["message"]
    assert not Path(launcher.socket_path).exists()
    try:
        assert _wait_api(workdir / "stay.sock")["id"] == "stay"
    finally:
        os.kill(pid, signal.SIGTERM)
    assert ended(pid)  # reparented: init reaps it


def test_an_oom_ends_a_vmm_before_the_launcher(launcher: Launcher, workdir: Path) -> None:
    """With CAP_SYS_RESOURCE the launcher lowers its OOM score adjustment and each child goes back
    to the original; without it (a container's root, as on this project's machines) nothing changes."""
    assert launcher.process is not None
    from firelet.launcher.oom import LAUNCHER_OOM_SCORE_ADJ

    original = int(Path("/proc/self/oom_score_adj").read_text())
    may_lower = bool(int(next(line for line in Path("/proc/self/status").read_text().splitlines()
                              if line.startswith("CapEff:")).split()[1], 16) & (1 << 24))  # CAP_SYS_RESOURCE
    pid = launcher.launch("vm-oom", _api_argv(workdir, "vm-oom"))
    _wait_api(workdir / "vm-oom.sock")
    expected = min(original, LAUNCHER_OOM_SCORE_ADJ) if may_lower else original
    assert int(Path(f"/proc/{launcher.process.pid}/oom_score_adj").read_text()) == expected
    assert int(Path(f"/proc/{pid}/oom_score_adj").read_text()) == original


def test_the_launchers_adjustment_is_lowered_and_a_childs_restored(tmp_path: Path) -> None:
    from firelet.launcher import oom

    path = tmp_path / "oom_score_adj"
    path.write_text("100\n")
    assert oom.protect_launcher(str(path)) == 100
    assert path.read_text() == str(oom.LAUNCHER_OOM_SCORE_ADJ)
    oom.restore(100, str(path))
    assert path.read_text() == "100"
    path.write_text("-800\n")  # already lower: kept
    assert oom.protect_launcher(str(path)) == -800 and path.read_text() == "-800"
    assert oom.protect_launcher(str(tmp_path / "missing")) is None
