"""A real warm launcher forking jailed firelet-vmm children through firelet-jailer's code path.

Real namespaces, mounts, cgroups (v1 on this host) and privileges; the child confines
itself with the function firelet-jailer's child runs, then serves its API from inside
the jail. From outside, the test reads the child's /proc entries and its cgroup files,
and afterwards checks that nothing is left: no cgroup, no host mount, nothing under the
jails' base. Bad jail options fail only their launch request, in one line.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from firelet.jailer import cgroups
from firelet.launcher.client import Launcher
from firelet.launcher.socket_path import LauncherError

from api_fake_backend import call
from launcher_utils import running_launcher, short_workdir

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="jailing needs root")

UID, GID = 4242, 4243


@pytest.fixture
def workdir() -> Iterator[Path]:
    yield from short_workdir()


@pytest.fixture
def launcher(workdir: Path) -> Iterator[Launcher]:
    yield from running_launcher(workdir)


@pytest.fixture
def base(workdir: Path) -> Path:
    path = workdir / "jails"
    path.mkdir()
    return path


@pytest.fixture
def parent() -> Iterator[str]:
    name = f"firelet-test-{uuid.uuid4().hex[:8]}"
    yield name
    for hierarchy in _cgroup_parents(name):  # only if a test failed half-way: never leave one behind
        for sub in sorted(Path(hierarchy, name).glob("**/"), key=lambda p: -len(p.parts)):
            sub.rmdir()


def _cgroup_parents(parent: str) -> list[str]:
    return [p for p, _kind, _ in cgroups.mounts() if os.path.exists(os.path.join(p, parent))]


def _host_mounts() -> set[str]:
    return {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()}


def _status(pid: int) -> dict[str, str]:
    fields = (line.partition(":") for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {key: value.strip() for key, _, value in fields}


def _api(sock: Path, method: str, path: str, body: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            return call(sock, method, path, body)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def test_a_jailed_child_is_confined_limited_serves_its_api_and_leaves_nothing(
        launcher: Launcher, workdir: Path, base: Path, parent: str) -> None:
    secret = workdir / "secret"
    secret.write_text("host only")
    mounts_before = _host_mounts()
    jail = {"uid": UID, "gid": GID, "chroot_base_dir": str(base), "new_pid_ns": True, "parent_cgroup": parent,
            "cgroups": {"pids.max": "32", "memory.limit_in_bytes": "512M", "cpu.cfs_quota_us": "50000"},
            "resource_limits": {"fsize": 1048576}}
    reply = launcher.request({"op": "launch", "id": "jl-1", "argv": ["--api-sock", "/run/api.sock", "--id", "jl-1"],
                              "stdout": str(workdir / "jl-1.out"), "stderr": str(workdir / "jl-1.err"),
                              "jail": jail})
    pid = reply["pid"]
    root = base / "firelet-vmm" / "jl-1" / "root"
    assert reply["jail"] == str(root)
    status, body = _api(root / "run" / "api.sock", "GET", "/")
    assert status == 200 and body["id"] == "jl-1" and body["state"] == "Not started"
    # a request past the start path (the warm-up loaded what it needs: nothing to import in the jail)
    assert _api(root / "run" / "api.sock", "PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 32})[0] == 204
    assert _api(root / "run" / "api.sock", "GET", "/vm/config")[0] == 200
    # unprivileged for good, PID 1 of its own namespace
    st = _status(pid)
    assert st["Uid"].split() == [str(UID)] * 4 and st["Gid"].split() == [str(GID)] * 4 and st["Groups"] == ""
    assert st["NoNewPrivs"] == "1" and st["CapEff"] == "0" * 16 and st["CapPrm"] == "0" * 16
    assert st["NSpid"].split() == [str(pid), "1"]
    assert st["Seccomp"] == "2"  # firelet-vmm's own filters, as from the command line
    lpid = launcher.ping()["pid"]  # the launcher went back to its own PID namespace for later children
    assert os.readlink(f"/proc/{lpid}/ns/pid_for_children") == os.readlink(f"/proc/{lpid}/ns/pid")
    # its root is the jail: only what the launcher made there (no runtime), nothing of the host
    seen = Path(f"/proc/{pid}/root")
    assert os.stat(seen).st_ino == os.stat(root).st_ino
    assert sorted(os.listdir(seen)) == ["dev", "firelet-vmm.pid", "run"]
    assert not (seen / str(secret).lstrip("/")).exists() and not (seen / "etc").exists()
    assert sorted(os.listdir(seen / "dev")) == ["kvm", "net"]
    assert (root / "firelet-vmm.pid").read_text() == f"{pid}\n"
    assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    # stdio: the launcher's files on the host; no other fd of the launcher's
    assert [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in (1, 2)] == [str(workdir / "jl-1.out"),
                                                                     str(workdir / "jl-1.err")]
    # cgroups: made, filled, read back, joined; rlimits set
    dirs = reply["cgroups"]
    assert len(dirs) == 3 and all(d.endswith(f"/{parent}/jl-1") for d in dirs)
    values = {Path(d, name).read_text().strip() for d in dirs for name in ("pids.max", "memory.limit_in_bytes",
                                                                            "cpu.cfs_quota_us")
              if Path(d, name).exists()}
    assert values == {"32", str(512 << 20), "50000"}
    membership = Path(f"/proc/{pid}/cgroup").read_text()
    for controller in ("pids", "memory", "cpu"):
        assert any(line.split(":")[2] == f"/{parent}/jl-1" and controller in line.split(":")[1].split(",")
                   for line in membership.splitlines()), membership
    limits = Path(f"/proc/{pid}/limits").read_text()
    assert any(line.startswith("Max file size") and line.split()[3:5] == ["1048576", "1048576"]
               for line in limits.splitlines()), limits
    assert any(line.startswith("Max open files") and line.split()[3:5] == ["2048", "2048"]
               for line in limits.splitlines()), limits
    [listed] = launcher.list()
    assert listed["state"] == "running" and listed["jail"] == str(root)
    # stop: the VMM ends cleanly; once reaped, nothing is left
    assert launcher.stop("jl-1") == ["jl-1"]
    [ended] = launcher.wait("jl-1")
    assert ended["state"] == "exited" and ended["exit_code"] == 0, (workdir / "jl-1.err").read_text()
    assert "oom_kills" not in ended and "cleanup_error" not in ended
    assert list(base.iterdir()) == []
    assert _cgroup_parents(parent) == []
    assert _host_mounts() == mounts_before
    assert [r["id"] for r in launcher.reap()] == ["jl-1"]


def test_jailed_and_plain_children_side_by_side(launcher: Launcher, workdir: Path, base: Path, parent: str) -> None:
    """Without new_pid_ns the child keeps the host's PID namespace; a plain launch after a jailed one is not jailed."""
    jail = {"uid": UID, "gid": GID, "chroot_base_dir": str(base), "parent_cgroup": parent, "id": "other-name"}
    jailed = launcher.launch("j-1", ["--api-sock", "/run/api.sock"], stderr=str(workdir / "j-1.err"), jail=jail)
    plain = launcher.launch("p-1", ["--api-sock", str(workdir / "p-1.sock")], stderr=str(workdir / "p-1.err"))
    root = base / "firelet-vmm" / "other-name" / "root"
    assert _api(root / "run" / "api.sock", "GET", "/")[0] == 200
    assert _api(workdir / "p-1.sock", "GET", "/")[0] == 200
    assert _status(jailed)["NSpid"] == str(jailed) and _status(jailed)["Uid"].split()[0] == str(UID)
    assert _status(plain)["Uid"].split()[0] == "0"
    assert os.readlink(f"/proc/{plain}/ns/mnt") == os.readlink("/proc/self/ns/mnt")
    launcher.stop()
    assert {r["id"]: r["exit_code"] for r in launcher.wait()} == {"j-1": 0, "p-1": 0}
    assert list(base.iterdir()) == []
    assert _cgroup_parents(parent) == []


BAD = [
    ("bad id", {"id": "a/b"}, "launch bad-1: jail id 'a/b': use 1 to 64 letters, digits or '-'"),
    ("negative uid", {"uid": -1}, "launch bad-1: jail uid -1: expected a number from 0 to 4294967294"),
    ("relative base", {"chroot_base_dir": "jails"}, "launch bad-1: jail chroot_base_dir 'jails': give an absolute"),
    ("unknown option", {"frobnicate": 1}, "launch: Object contains unknown field `frobnicate`"),
    ("bad cgroup name", {"cgroups": {"pids": "1"}}, "launch bad-1: jail cgroups 'pids': '1': expected"),
    ("existing jail", {}, "launch bad-1: jail {base}/firelet-vmm/bad-1/root exists and holds dev"),
    ("unknown cgroup file", {"cgroups": {"pids.nope": "1"}}, "launch bad-1: cgroup pids.nope: no such file in"),
    ("unwritable cgroup file", {"cgroups": {"memory.usage_in_bytes": "5"}},
     "launch bad-1: cgroup memory.usage_in_bytes=5: the kernel refused"),
    ("missing netns", {"netns": "/var/run/netns/firelet-no-such"},
     "launch bad-1: netns: /var/run/netns/firelet-no-such: No such file or directory"),
    # found by the child itself after the fork: the same one line, the child ended, nothing left
    ("not a netns", {"netns": "{secret}"}, "launch bad-1: netns {secret}: setns: Invalid argument"),
]


@pytest.mark.parametrize(("case", "options", "message"), BAD, ids=[case for case, _, _ in BAD])
def test_bad_jail_options_fail_that_launch_in_one_line_and_leave_nothing(
        launcher: Launcher, workdir: Path, base: Path, parent: str, case: str, options: dict[str, Any],
        message: str) -> None:
    secret = workdir / "secret"
    secret.write_text("x")
    jail: dict[str, Any] = {"uid": UID, "gid": GID, "chroot_base_dir": str(base), "parent_cgroup": parent,
                            "cgroups": {"pids.max": "8"}}
    jail.update({k: (v.format(secret=secret) if isinstance(v, str) else v) for k, v in options.items()})
    if case == "existing jail":
        (base / "firelet-vmm" / "bad-1" / "root" / "dev").mkdir(parents=True)
    before = sorted(str(p) for p in base.rglob("*"))
    mounts_before = _host_mounts()
    with pytest.raises(LauncherError) as refused:
        launcher.launch("bad-1", ["--api-sock", "/run/api.sock"], stderr=str(workdir / "bad.err"), jail=jail)
    text = str(refused.value)
    assert "\n" not in text and text.startswith(message.format(base=base, secret=secret)), text
    assert sorted(str(p) for p in base.rglob("*")) == before
    assert _cgroup_parents(parent) == []
    assert _host_mounts() == mounts_before
    # the launcher goes on: nothing was recorded for the failed launch, and the next launch works
    assert launcher.ping()["children"] == 0 and launcher.list() == []
    pid = launcher.launch("ok-1", ["--api-sock", str(workdir / "ok.sock")], stderr=str(workdir / "ok.err"))
    assert _api(workdir / "ok.sock", "GET", "/")[0] == 200
    launcher.stop("ok-1")
    assert launcher.wait("ok-1")[0]["exit_code"] == 0 and pid > 0


def test_the_launch_request_carries_the_jail_on_the_wire(launcher: Launcher, workdir: Path, base: Path) -> None:
    """The protocol as a non-Python client speaks it: one JSON line, the jail's options by their names."""
    import socket

    line = json.dumps({"op": "launch", "id": "w-1", "argv": ["--api-sock", "/run/api.sock"], "stderr": "null",
                       "jail": {"uid": UID, "gid": GID, "chroot_base_dir": str(base)}})
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(launcher.socket_path)
        s.sendall(line.encode() + b"\n")
        reply = json.loads(s.makefile().readline())
    root = base / "firelet-vmm" / "w-1" / "root"
    assert reply["ok"] and reply["jail"] == str(root) and reply["cgroups"] == []
    assert _api(root / "run" / "api.sock", "GET", "/")[0] == 200  # its SIGTERM handler is in place
    launcher.stop("w-1")
    assert launcher.wait("w-1")[0]["exit_code"] == 0
    assert list(base.iterdir()) == []


def test_an_oom_kill_is_in_the_childs_record_and_its_jail_still_goes(
        launcher: Launcher, workdir: Path, base: Path, parent: str) -> None:
    """1 MiB cannot hold the pages a Python process dirties (a warm child needs a few MiB)."""
    jail = {"uid": UID, "gid": GID, "chroot_base_dir": str(base), "parent_cgroup": parent,
            "cgroups": {"memory.limit_in_bytes": "1M"}}
    launcher.launch("oom-1", ["--api-sock", "/run/api.sock"], stderr=str(workdir / "oom.err"), jail=jail)
    [ended] = launcher.wait("oom-1")
    assert ended["state"] == "killed" and ended["exit_signal"] == "SIGKILL"
    assert ended["oom_kills"] >= 1 and ended["error"].startswith("the VMM ran out of memory: the OOM killer ended it")
    assert list(base.iterdir()) == []
    assert _cgroup_parents(parent) == []


def test_a_jailed_child_joins_its_netns_and_the_launcher_keeps_no_fd_for_it(
        launcher: Launcher, workdir: Path, base: Path) -> None:
    import subprocess

    from firelet.launcher import procinfo

    name = f"firelet-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    netns = f"/var/run/netns/{name}"
    try:
        lpid = launcher.ping()["pid"]
        fds_before = procinfo.fd_count(lpid)
        jail = {"uid": UID, "gid": GID, "chroot_base_dir": str(base), "netns": netns, "cgroup_version": 2}
        pid = launcher.launch("ns-1", ["--api-sock", "/run/api.sock"], stderr=str(workdir / "ns.err"), jail=jail)
        root = base / "firelet-vmm" / "ns-1" / "root"
        assert _api(root / "run" / "api.sock", "GET", "/")[0] == 200
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(netns).st_ino
        assert procinfo.fd_count(lpid) == fds_before  # the netns handle went once the child joined it
        launcher.stop("ns-1")
        assert launcher.wait("ns-1")[0]["exit_code"] == 0
        assert list(base.iterdir()) == []
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)


def test_shared_parents_go_with_the_last_jail_and_a_shutdown_stops_jailed_children(
        launcher: Launcher, workdir: Path, base: Path, parent: str) -> None:
    jail = {"uid": UID, "gid": GID, "chroot_base_dir": str(base), "parent_cgroup": parent, "new_pid_ns": True,
            "cgroups": {"pids.max": "32"}}
    for vm_id in ("s-1", "s-2"):
        launcher.launch(vm_id, ["--api-sock", "/run/api.sock"], stderr=str(workdir / f"{vm_id}.err"), jail=jail)
        assert _api(base / "firelet-vmm" / vm_id / "root" / "run" / "api.sock", "GET", "/")[0] == 200
    launcher.stop("s-1")  # the one that made <base>/firelet-vmm and the parent cgroup ends first
    [first] = launcher.wait("s-1")
    assert first["exit_code"] == 0 and "cleanup_error" not in first
    assert os.listdir(base / "firelet-vmm") == ["s-2"] and len(_cgroup_parents(parent)) == 1
    reply = launcher.shutdown()
    assert reply["stopping"] == ["s-2"]
    assert launcher.process is not None and launcher.process.returncode == 0
    assert list(base.iterdir()) == []
    assert _cgroup_parents(parent) == []
