"""The fleet: per-member files and drive copies, and `firelet fleet` against a real launcher."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from firelet.cli.fleet import format_table
from firelet.errors import UsageError
from firelet.launcher.fleet import Fleet, Member, _read_config
from firelet.launcher.placement import sparse_copy, tidy

from launcher_utils import ended, short_workdir

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def workdir() -> Iterator[Path]:
    yield from short_workdir()


def _config(workdir: Path, **extra: object) -> Path:
    (workdir / "rw.img").write_bytes(b"")
    os.truncate(workdir / "rw.img", 64 << 20)
    with open(workdir / "rw.img", "r+b") as f:
        f.seek(5 << 20)
        f.write(b"data in the middle")
    (workdir / "ro.img").write_bytes(b"\0" * 4096)
    config = {"boot-source": {"kernel_image_path": "vmlinux", "boot_args": "console=ttyS0"},
              "drives": [{"drive_id": "rootfs", "path_on_host": "rw.img", "is_root_device": True, "is_read_only": False},
                         {"drive_id": "shared", "path_on_host": str(workdir / "ro.img"), "is_root_device": False,
                          "is_read_only": True}],
              "machine-config": {"vcpu_count": 1, "mem_size_mib": 128}, **extra}
    path = workdir / "config.json"
    path.write_text(json.dumps(config))
    return path


def test_sparse_copy_keeps_the_data_and_the_holes(workdir: Path) -> None:
    _config(workdir)
    sparse_copy(workdir / "rw.img", workdir / "copy.img")
    assert (workdir / "copy.img").read_bytes() == (workdir / "rw.img").read_bytes()
    assert os.stat(workdir / "copy.img").st_blocks * 512 < 1 << 20  # 64 MiB long, a few KiB stored
    with pytest.raises(FileExistsError):
        sparse_copy(workdir / "rw.img", workdir / "copy.img")


def test_sparse_copy_across_filesystems_falls_back_to_read_and_write(workdir: Path) -> None:
    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat(workdir).st_dev:
        pytest.fail("needs /dev/shm on another filesystem than /tmp, as on the host and in the rig")
    source = Path(tempfile.mkdtemp(dir="/dev/shm")) / "disk.img"
    try:
        with open(source, "wb") as f:
            f.truncate(8 << 20)
            f.seek(3 << 20)
            f.write(b"across filesystems")
        sparse_copy(source, workdir / "copy.img")  # copy_file_range says EXDEV here
        assert (workdir / "copy.img").read_bytes() == source.read_bytes()
    finally:
        shutil.rmtree(source.parent)


def test_each_member_gets_its_files_a_private_writable_drive_and_the_shared_read_only_one(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workdir)
    config = _read_config(_config(workdir, logger={"log_path": "elsewhere.log", "level": "Debug"}))
    fleet = Fleet.__new__(Fleet)
    fleet.dir = workdir / "fleet"
    member = Member("vm-1", fleet.dir / "vm-1")
    argv = fleet._prepare(member, config)
    mine = json.loads((member.dir / "config.json").read_text())
    assert mine["boot-source"]["kernel_image_path"] == str(workdir / "vmlinux")  # absolute for the child
    assert mine["drives"][0]["path_on_host"] == str(member.dir / "drive-0.img")
    assert (member.dir / "drive-0.img").read_bytes() == (workdir / "rw.img").read_bytes()
    assert mine["drives"][1]["path_on_host"] == str(workdir / "ro.img")  # shared, not copied
    assert mine["logger"] == {"log_path": str(member.dir / "vmm.log"), "level": "Debug"}
    assert argv == ["--api-sock", str(member.dir / "api.sock"), "--config-file", str(member.dir / "config.json"),
                    "--id", "vm-1", "--metrics-path", str(member.dir / "metrics.json")]
    assert json.loads((workdir / "config.json").read_text())["drives"][0]["path_on_host"] == "rw.img"  # untouched


@pytest.mark.parametrize(("text", "message"), [
    ("{", "not valid JSON"),
    ("[]", "expected a JSON object"),
    ('{"network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0"}]}', "each microVM needs its own TAP"),
])
def test_a_config_the_fleet_cannot_use_is_refused_in_one_line(workdir: Path, text: str, message: str) -> None:
    (workdir / "c.json").write_text(text)
    with pytest.raises(UsageError, match=message):
        _read_config(workdir / "c.json")


def _fleet(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "firelet", "fleet", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_fleet_up_reports_each_failure_by_id_and_stop_all_leaves_nothing(workdir: Path) -> None:
    config = _config(workdir)  # no vmlinux: each firelet-vmm refuses its boot source
    fleet_dir = workdir / "f"
    up = _fleet("--dir", str(fleet_dir), "up", "3", "--config", str(config), cwd=workdir)
    assert up.returncode == 1
    failures = [line for line in up.stderr.splitlines() if line.startswith("fleet: failed:")]
    assert [line.split()[2] for line in failures] == ["vm-1:", "vm-2:", "vm-3:"]
    assert all("firelet-vmm: error: config file: boot-source:" in line and "kernel" in line for line in failures)
    assert "fleet: 0/3 started, 3 failed" in up.stderr
    assert sorted(p.name for p in (fleet_dir / "vm-2").iterdir()) == [
        "config.json", "console.log", "metrics.json", "stderr.log", "vmm.log"]  # the drive copy is gone
    listed = _fleet("--dir", str(fleet_dir), "list", cwd=workdir)
    assert listed.returncode == 0
    assert [line.split()[:3] for line in listed.stdout.splitlines()] == [
        ["ID", "PID", "STATE"], *[[f"vm-{i}", line.split()[1], "exited"] for i, line in
                                  zip((1, 2, 3), listed.stdout.splitlines()[1:], strict=True)]]
    pid = int((fleet_dir / "launcher.log").read_text().split("(pid ")[1].split(")")[0])
    stop = _fleet("--dir", str(fleet_dir), "stop", "--all", cwd=workdir)
    assert stop.returncode == 0, stop.stderr
    assert not (fleet_dir / "launcher.sock").exists()
    assert ended(pid)
    again = _fleet("--dir", str(fleet_dir), "list", cwd=workdir)
    assert again.returncode == 1 and again.stderr.startswith(f"firelet: error: no launcher answers on {fleet_dir}")


def test_the_table_says_state_uptime_cpu_and_memory() -> None:
    table = format_table([
        {"id": "vm-1", "pid": 10, "state": "running", "uptime_s": 12.34, "cpu_s": 0.5, "rss_kib": 20480, "uss_kib": 4608},
        {"id": "vm-2", "pid": 11, "state": "killed", "exit_signal": "SIGKILL", "uptime_s": 1, "cpu_s": 0, "rss_kib": 0, "uss_kib": 0},
    ])
    assert table.splitlines() == [
        "ID    PID  STATE           UPTIME  CPU    RSS    USS",
        "vm-1  10   running         12.3s   0.50s  20.0M  4.5M",
        "vm-2  11   killed SIGKILL  1.0s    0.00s  0.0M   0.0M",
    ]


JAIL_UID, JAIL_GID = 4242, 4243


@pytest.mark.skipif(os.geteuid() != 0, reason="a jail's files are owned by its user: needs root")
def test_a_jailed_member_gets_its_files_in_its_jail_seen_by_in_jail_paths_and_tidy_leaves_nothing(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workdir)
    (workdir / "vmlinux").write_bytes(b"kernel")
    os.chmod(workdir / "vmlinux", 0o600)  # not readable by the jail's user: copied, owned by it
    config = _read_config(_config(workdir, logger={"log_path": "elsewhere.log", "level": "Debug"}))
    fleet = Fleet.__new__(Fleet)
    fleet.dir = workdir / "fleet"
    member = Member("vm-1", fleet.dir / "vm-1")
    base = workdir / "jails"
    argv = fleet._prepare(member, config, {"uid": JAIL_UID, "gid": JAIL_GID, "chroot_base_dir": str(base)})
    root = base / "firelet-vmm" / "vm-1" / "root"
    assert member.root == root and member.api_sock == root / "api.sock"
    assert argv == ["--api-sock", "/api.sock", "--config-file", "/config.json", "--id", "vm-1",
                    "--metrics-path", "/metrics.json"]
    mine = json.loads((root / "config.json").read_text())
    assert mine["boot-source"]["kernel_image_path"] == "/kernel_image"
    assert [d["path_on_host"] for d in mine["drives"]] == ["/drive-0.img", "/drive-1.img"]
    assert mine["logger"]["log_path"] == "/vmm.log"
    assert (root / "drive-0.img").read_bytes() == (workdir / "rw.img").read_bytes()
    assert os.stat(root / "drive-1.img").st_ino == os.stat(workdir / "ro.img").st_ino  # world-readable: linked
    assert (root / "kernel_image").read_bytes() == b"kernel"
    owners = {p.name: (p.stat().st_uid, p.stat().st_gid) for p in root.iterdir()}
    for name in ("drive-0.img", "kernel_image", "vmm.log", "metrics.json"):
        assert owners[name] == (JAIL_UID, JAIL_GID), name
    assert oct(os.stat(root / "config.json").st_mode & 0o777) == "0o644"
    (root / "api.sock").touch()  # as a killed VMM leaves it
    other = Member("vm-2", fleet.dir / "vm-2")
    fleet._prepare(other, config, {"uid": JAIL_UID, "gid": JAIL_GID, "chroot_base_dir": str(base)})
    tidy(member.dir)
    assert sorted(p.name for p in (base / "firelet-vmm").iterdir()) == ["vm-2"]  # still in use
    tidy(other.dir)
    assert not base.exists()  # the fleet made the base too: the last one out removed all of it
    assert sorted(p.name for p in fleet.dir.iterdir()) == ["vm-1", "vm-2"]
    assert sorted(p.name for p in member.dir.iterdir()) == ["config.json", "metrics.json", "vmm.log"]
    assert (workdir / "ro.img").exists() and (workdir / "vmlinux").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="a jail's files are owned by its user: needs root")
def test_a_jail_left_behind_is_not_reused(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workdir)
    config = _read_config(_config(workdir))
    (workdir / "jails" / "firelet-vmm" / "vm-1" / "root").mkdir(parents=True)
    fleet = Fleet.__new__(Fleet)
    fleet.dir = workdir / "fleet"
    with pytest.raises(UsageError, match=r"jail .*/vm-1/root exists"):
        fleet._prepare(Member("vm-1", fleet.dir / "vm-1"), config,
                       {"uid": JAIL_UID, "gid": JAIL_GID, "chroot_base_dir": str(workdir / "jails")})


@pytest.mark.parametrize(("flags", "message"), [
    (["--uid", "4242"], "a jail needs both --uid and --gid"),
    (["--cgroup", "pids.max=10"], "--cgroup confines the microVMs: give --uid and --gid too"),
    (["--uid", "4242", "--gid", "1", "--cgroup", "pids"], "--cgroup 'pids': expected <controller>.<file>=<value>"),
])
def test_fleet_up_refuses_half_a_jail_in_one_line(workdir: Path, flags: list[str], message: str) -> None:
    up = _fleet("--dir", str(workdir / "f"), "up", "1", "--config", str(_config(workdir)), *flags, cwd=workdir)
    [line] = up.stderr.strip().splitlines()
    assert up.returncode == 2 and line.startswith("firelet: error: ") and message in line, up.stderr
    assert not (workdir / "f").exists()  # refused before any launcher started
