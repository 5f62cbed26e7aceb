"""firelet-jailer end to end on this host: a probe exec'd in the jail reports what it can reach.

Real namespaces, mounts, cgroups (v1 here; v2 in the rig, tests/integration/test_jailer.py)
and privileges; the probe runs through exactly the jailer's code path (no test hook in
it) and writes its report into the jail. From outside, the test checks the process's
/proc entries while it waits, and afterwards that nothing is left: no cgroup, no
mount in the host's table, nothing under the chroot base.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import firelet
from firelet.jailer import cgroups

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the jailer needs root")

REPO = Path(firelet.__file__).resolve().parent.parent
UID, GID = 4242, 4243

PROBE = r'''#!{python}
"""Runs inside the jail: what can it see, open, write; which ids, limits and descriptors does it hold?"""
import ctypes, errno, json, os, resource, sys, time

def try_open(path, flags):
    try:
        os.close(os.open(path, flags, 0o644))
        return "ok"
    except OSError as exc:
        return errno.errorcode[exc.errno]

libc = ctypes.CDLL(None, use_errno=True)

class Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

class Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

caps = (Data * 2)()
assert libc.capget(ctypes.byref(Header(0x20080522, 0)), caps) == 0  # _LINUX_CAPABILITY_VERSION_3
kvm = os.stat("/dev/kvm")
report = {{
    "argv": sys.argv[1:], "env": dict(os.environ), "pid": os.getpid(),
    "ids": [list(os.getresuid()), list(os.getresgid()), os.getgroups()],
    "no_new_privs": libc.prctl(39, 0, 0, 0, 0),  # PR_GET_NO_NEW_PRIVS
    "cap_eff": caps[0].effective | caps[1].effective << 32,
    "cap_prm": caps[0].permitted | caps[1].permitted << 32,
    "read": {{p: try_open(p, os.O_RDONLY) for p in {reads!r}}},
    "write": {{p: try_open(p, os.O_WRONLY | os.O_CREAT) for p in {writes!r}}},
    "jail_root": sorted(os.listdir("/")), "above_root": sorted(os.listdir("/..")),
    "dev": sorted(os.listdir("/dev")), "dev_net": os.listdir("/dev/net"),
    "kvm": [kvm.st_uid, kvm.st_gid, oct(kvm.st_mode), os.major(kvm.st_rdev), os.minor(kvm.st_rdev)],
    "kvm_opens": try_open("/dev/kvm", os.O_RDWR),
    "tun": list(divmod(os.stat("/dev/net/tun").st_rdev, 256)),
    "nofile": resource.getrlimit(resource.RLIMIT_NOFILE), "fsize": resource.getrlimit(resource.RLIMIT_FSIZE),
}}
'''

PROBE_TAIL = r'''
def is_open(fd):
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False

report["fds"] = [fd for fd in range(1024) if is_open(fd)]
with open("/report.json.part", "w") as f:  # renamed whole: the test never reads half a report
    json.dump(report, f)
os.rename("/report.json.part", "/report.json")
while not os.path.exists("/release"):
    time.sleep(0.02)
for name in ("/report.json", "/release", "/jail-file"):
    if os.path.exists(name):
        os.unlink(name)  # the VMM's own files in its jail are its user's; the probe tidies its own
sys.exit(int(report["argv"][-1]) if report["argv"][-1].isdigit() else 0)
'''


def _probe(tmp_path: Path, reads: list[str], writes: list[str]) -> Path:
    script = tmp_path / "probe"
    script.write_text(PROBE.format(python=sys.executable, reads=reads, writes=writes) + PROBE_TAIL)
    script.chmod(0o755)
    return script


def _host_mounts() -> set[str]:
    return {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()}


def _jailer(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "firelet.jailer", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


@contextmanager
def _killed_if_running(proc: subprocess.Popen[str]) -> Iterator[None]:
    """Whatever the checks inside do, the jailer does not outlive the test (nor, so, its jail)."""
    try:
        yield
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the jailer ended ({proc.returncode}) before {path}: {proc.stderr.read()}")
        assert time.monotonic() < deadline, f"no {path} within {timeout} s"
        time.sleep(0.02)


def _cgroup_parents(parent: str) -> list[str]:
    return [p for p, _kind, _ in cgroups.mounts() if os.path.exists(os.path.join(p, parent))]


@pytest.fixture
def base(tmp_path: Path) -> Path:
    path = tmp_path / "jails"
    path.mkdir()
    return path


def test_the_jailed_probe_is_confined_limited_and_leaves_nothing(tmp_path: Path, base: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("host only")
    stdlib = os.path.dirname(os.__file__)
    probe = _probe(tmp_path, reads=["/etc/shadow", "/etc/passwd", "/root", str(REPO / "tests"), str(secret),
                                    "/proc/self/status", "/sys/fs/cgroup", "/var", "/dev/sda", stdlib + "/os.py"],
                   writes=[stdlib + "/evil.py", str(REPO / "firelet" / "evil.py"), "/usr/evil", "/etc/evil",
                           "/dev/evil", str(tmp_path / "evil"), "/jail-file"])
    parent, vm_id = f"firelet-test-{uuid.uuid4().hex[:8]}", "probe-1"
    mounts_before = _host_mounts()
    leaked = os.open("/etc/hostname", os.O_RDONLY)  # inherited by the jailer: must not reach the VMM
    try:
        proc = _jailer("--id", vm_id, "--exec-file", str(probe), "--uid", str(UID), "--gid", str(GID),
                       "--chroot-base-dir", str(base), "--new-pid-ns", "--parent-cgroup", parent,
                       "--cgroup", "pids.max=16", "--cgroup", "memory.limit_in_bytes=128M",
                       "--cgroup", "cpu.cfs_quota_us=50000", "--resource-limit", "fsize=1048576",
                       "--", "--api-sock", "/run/api.sock", "7", pass_fds=(leaked,))
    finally:
        os.close(leaked)
    root = base / "probe" / vm_id / "root"
    with _killed_if_running(proc):
        _wait_for(root / "report.json", proc)
        report = json.loads((root / "report.json").read_text())
        pid = int((root / "probe.pid").read_text())
        status = Path(f"/proc/{pid}/status").read_text()
        membership = Path(f"/proc/{pid}/cgroup").read_text()
        jail_mounts = Path(f"/proc/{pid}/mountinfo").read_text()
        other_ns = {ns: os.stat(f"/proc/{pid}/ns/{ns}").st_ino != os.stat(f"/proc/self/ns/{ns}").st_ino
                    for ns in ("mnt", "pid", "net")}
        (root / "release").touch()
        out, err = proc.communicate(timeout=30)
    # the jailer's argv to the VMM, as Firecracker's; the environment is only what Python needs
    assert report["argv"][0] == f"--id={vm_id}" and report["argv"][1].startswith("--start-time-us=")
    assert report["argv"][3:] == ["--api-sock", "/run/api.sock", "7"]
    assert set(report["env"]) == {"PYTHONPATH", "PYTHONDONTWRITEBYTECODE"}
    # unprivileged for good
    assert report["ids"] == [[UID] * 3, [GID] * 3, []]
    assert report["no_new_privs"] == 1 and report["cap_eff"] == 0 and report["cap_prm"] == 0
    assert "NoNewPrivs:\t1" in status and "CapEff:\t0000000000000000" in status
    # PID 1 of its own PID namespace; its own mount namespace; the host's network (no --netns)
    assert report["pid"] == 1
    assert other_ns == {"mnt": True, "pid": True, "net": False}
    # nothing of the host to read but the runtime; nothing at all to write but the jail's root
    assert set(report["read"].values()) - {"ok"} == {"ENOENT"}, report["read"]
    assert [p for p, r in report["read"].items() if r == "ok"] == [stdlib + "/os.py"]
    assert {p: r for p, r in report["write"].items() if r != "EROFS"} == {"/jail-file": "ok"}, report["write"]
    assert report["above_root"] == report["jail_root"]
    assert report["jail_root"] == sorted({"dev", "run", "probe.pid", "jail-file", "usr", "lib", "lib64", "etc",
                                          str(tmp_path).split("/")[1], str(REPO).split("/")[1]})
    # /dev: the VMM's two nodes, Firecracker's numbers, owned by the VMM's user, rw for it alone
    assert report["dev"] == ["kvm", "net"] and report["dev_net"] == ["tun"]
    assert report["kvm"] == [UID, GID, oct(0o20600), 10, 232] and report["tun"] == [10, 200]
    assert report["kvm_opens"] == "ok"
    # limits and descriptors
    assert report["nofile"] == [2048, 2048] and report["fsize"] == [1048576, 1048576]
    assert report["fds"] == [0, 1, 2]
    for controller in ("pids", "memory", "cpu"):
        assert any(line.split(":")[2] == f"/{parent}/{vm_id}" and controller in line.split(":")[1].split(",")
                   for line in membership.splitlines()), membership
    assert not any(line.split()[4] == "/" and "proc" in line for line in jail_mounts.splitlines())
    # the VMM's exit status is the jailer's; and nothing is left anywhere
    assert proc.returncode == 7, err
    assert out == "" and err == ""
    assert list(base.iterdir()) == []
    assert _cgroup_parents(parent) == []
    assert _host_mounts() == mounts_before


def test_netns_and_daemonize(tmp_path: Path, base: Path) -> None:
    name = f"firelet-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    netns = f"/var/run/netns/{name}"
    try:
        probe = _probe(tmp_path, reads=[], writes=[])
        proc = _jailer("--id", "netns-1", "--exec-file", str(probe), "--uid", str(UID), "--gid", str(GID),
                       "--chroot-base-dir", str(base), "--netns", netns, "--daemonize", "--cgroup-version", "2")
        root = base / "probe" / "netns-1" / "root"
        with _killed_if_running(proc):
            _wait_for(root / "report.json", proc)
            report = json.loads((root / "report.json").read_text())
            pid = int((root / "probe.pid").read_text())
            in_netns = os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(netns).st_ino
            session = os.getsid(pid) == pid
            stdio = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in (0, 1, 2)]
            (root / "release").touch()
            out, err = proc.communicate(timeout=30)
        assert in_netns and session
        assert stdio == ["/dev/null"] * 3
        assert report["pid"] == pid  # no --new-pid-ns: the host's PID namespace
        assert proc.returncode == 0 and out == "" and err == ""  # the daemonized jailer says nothing
        assert list(base.iterdir()) == []
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)


@pytest.mark.parametrize(("case", "message"), [
    ("unknown flag", "firelet-jailer: error: unrecognized arguments: --frobnicate"),
    ("bad id", "firelet-jailer: error: --id 'a/b': use 1 to 64 letters, digits or '-'"),
    ("missing exec file", "firelet-jailer: error: exec file {tmp}/nope: no such file"),
    ("non-executable exec file", "firelet-jailer: error: exec file {tmp}/probe: not executable"),
    ("missing netns", "firelet-jailer: error: netns: /var/run/netns/firelet-no-such: No such file or directory"),
    ("not a netns", "firelet-jailer: error: netns {tmp}/secret: setns: Invalid argument"),
    ("unknown cgroup file", "firelet-jailer: error: cgroup pids.nope: no such file in"),
    ("unwritable cgroup file", "firelet-jailer: error: cgroup memory.usage_in_bytes=5: the kernel refused"),
    ("cgroup controller not in v2", "firelet-jailer: error: cgroup: the 'pids' controller is not available"),
    ("existing jail", "firelet-jailer: error: jail {base}/probe/same/root exists and holds dev"),
])
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path: Path, base: Path, case: str, message: str) -> None:
    probe = _probe(tmp_path, reads=[], writes=[])
    (tmp_path / "secret").write_text("x")
    parent = f"firelet-test-{uuid.uuid4().hex[:8]}"
    args = ["--id", "same", "--exec-file", str(probe), "--uid", str(UID), "--gid", str(GID),
            "--chroot-base-dir", str(base), "--parent-cgroup", parent, "--cgroup", "pids.max=8"]
    extra: dict[str, list[str]] = {
        "unknown flag": ["--frobnicate"], "bad id": ["--id", "a/b"],
        "missing exec file": ["--exec-file", str(tmp_path / "nope")],
        "missing netns": ["--netns", "/var/run/netns/firelet-no-such"],
        "not a netns": ["--netns", str(tmp_path / "secret")],
        "unknown cgroup file": ["--cgroup", "pids.nope=1"],
        "unwritable cgroup file": ["--cgroup", "memory.usage_in_bytes=5"],
        "cgroup controller not in v2": ["--cgroup-version", "2"],
    }
    if case == "non-executable exec file":
        probe.chmod(0o644)
    if case == "existing jail":
        (base / "probe" / "same" / "root" / "dev").mkdir(parents=True)
    mounts_before = _host_mounts()
    before = sorted(str(p) for p in base.rglob("*"))
    proc = _jailer(*args, *extra.get(case, []))
    out, err = proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert out == ""
    assert err.count("\n") == 1 and err.startswith(message.format(tmp=tmp_path, base=base)), err
    assert sorted(str(p) for p in base.rglob("*")) == before
    assert _cgroup_parents(parent) == []
    assert _host_mounts() == mounts_before


def _api_get(sock: Path) -> str:
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(sock))
        s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data.decode()


def test_firelet_vmm_answers_its_api_from_inside_the_jail_and_stops_on_sigterm(base: Path) -> None:
    vmm = Path(sys.executable).parent / "firelet-vmm"  # the console script: #! the venv's python
    if not vmm.exists():
        pytest.fail(f"{vmm} is missing: install firelet in this venv (pip install -e .)")
    parent = f"firelet-test-{uuid.uuid4().hex[:8]}"
    mounts_before = _host_mounts()
    proc = _jailer("--id", "api-1", "--exec-file", str(vmm), "--uid", str(UID), "--gid", str(GID),
                   "--chroot-base-dir", str(base), "--new-pid-ns", "--parent-cgroup", parent,
                   "--cgroup", "pids.max=32", "--", "--api-sock", "/run/api.sock")
    sock = base / "firelet-vmm" / "api-1" / "root" / "run" / "api.sock"
    with _killed_if_running(proc):
        _wait_for(sock, proc)
        answer = _api_get(sock)
        proc.terminate()  # to the jailer: passed on to the VMM, which ends cleanly
        _out, err = proc.communicate(timeout=30)
    assert '"id":"api-1"' in answer and '"state":"Not started"' in answer
    assert proc.returncode == 0, err
    assert list(base.iterdir()) == []
    assert _cgroup_parents(parent) == []
    assert _host_mounts() == mounts_before


def test_a_vmm_over_its_memory_limit_is_reported_as_oom_and_cleaned_up(tmp_path: Path, base: Path) -> None:
    hog = tmp_path / "hog"
    hog.write_text(f"#!{sys.executable}\nimport mmap\nm = mmap.mmap(-1, 256 << 20)\n"
                   "for i in range(0, 256 << 20, 4096):\n    m[i] = 1\n")
    hog.chmod(0o755)
    parent = f"firelet-test-{uuid.uuid4().hex[:8]}"
    proc = _jailer("--id", "oom-1", "--exec-file", str(hog), "--uid", str(UID), "--gid", str(GID),
                   "--chroot-base-dir", str(base), "--parent-cgroup", parent,
                   "--cgroup", "memory.limit_in_bytes=64M")
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + 9
    assert err.startswith("firelet-jailer: error: the VMM ran out of memory: the OOM killer ended it"), err
    assert list(base.iterdir()) == []
    assert _cgroup_parents(parent) == []
