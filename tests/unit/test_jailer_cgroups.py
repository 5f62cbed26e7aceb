"""The jailer's cgroups: found from the mount table, made in a test-made parent, read back, joined, removed.

Real cgroup files. This host mounts the v1 controllers (cpu, memory, pids, cpuset, ...)
under /sys/fs/cgroup/<controller> and a cgroup2 hierarchy with only hugetlb at
/sys/fs/cgroup/unified: v1 is tested here with real controllers, v2 with its core
files (cgroup.max.*) and its refusals; v2's memory/pids/cpu limits are tested in the
rig (tests/integration/test_jailer.py), which mounts cgroup2 with every controller.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from firelet.jailer import cgroups

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="making cgroups needs root")


def _v1(controller: str) -> str:
    for point, kind, opts in cgroups.mounts():
        if kind == "cgroup" and controller in opts:
            return point
    pytest.fail(f"this host has no cgroup v1 {controller} hierarchy: see the module docstring")


def _v2() -> str:
    roots = [point for point, kind, _ in cgroups.mounts() if kind == "cgroup2"]
    if not roots:
        pytest.fail("this host has no cgroup2 hierarchy mounted")
    return roots[0]


@pytest.fixture
def parent() -> str:
    """A unique parent cgroup name; the test must leave no directory of it in any hierarchy."""
    name = f"firelet-test-{uuid.uuid4().hex[:8]}"
    yield name
    left = [p for p, kind, _ in cgroups.mounts() if os.path.exists(os.path.join(p, name))]
    for point in left:
        for dirpath, _dirs, _files in sorted(os.walk(os.path.join(point, name)), reverse=True):
            os.rmdir(dirpath)
    assert not left, f"cgroup directories left behind under {left}"


def test_plan_finds_each_v1_controllers_hierarchy(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text("cgroup /cg/cpu cgroup rw,relatime,cpu,cpuacct 0 0\n"
                      "cgroup /cg/mem\\040ory cgroup rw,memory 0 0\n"
                      "cgroup2 /cg/unified cgroup2 rw 0 0\nproc /proc proc rw 0 0\n")
    dirs = cgroups.plan(1, "fc", "vm", (("cpu.cfs_quota_us", "5"), ("memory.limit_in_bytes", "1M"),
                                         ("cpuacct.x", "1")), proc_mounts=str(mounts))
    assert [(d.path, d.settings) for d in dirs] == [
        ("/cg/cpu/fc/vm", [("cpu.cfs_quota_us", "5"), ("cpuacct.x", "1")]),
        ("/cg/mem ory/fc/vm", [("memory.limit_in_bytes", "1M")]),
    ]
    [v2] = cgroups.plan(2, "a/b", "vm", (("memory.max", "1M"),), proc_mounts=str(mounts))
    assert v2.path == "/cg/unified/a/b/vm"
    with pytest.raises(cgroups.CgroupError, match="no cgroup v1 hierarchy carries the 'pids' controller"):
        cgroups.plan(1, "fc", "vm", (("pids.max", "5"),), proc_mounts=str(mounts))
    mounts.write_text("proc /proc proc rw 0 0\n")
    with pytest.raises(cgroups.CgroupError, match="no cgroup2 hierarchy is mounted"):
        cgroups.plan(2, "fc", "vm", (("pids.max", "5"),), proc_mounts=str(mounts))


@pytest.mark.parametrize(("written", "read", "same"), [
    ("268435456", "268435456", True),
    ("256M", "268435456", True),
    ("1G", "1073741824", True),
    ("10000", "8192", True),  # v1 memory limits round down to a page
    ("10000", "12288", False),
    ("max", "max", True),
    ("50000", "50000 100000", True),  # cpu.max: the period is filled in
    ("50000 100000", "50000 100000", True),
    ("50000 20000", "50000 100000", False),
    ("0,1", "0-1", True),  # cpuset lists are re-spelled as ranges
    ("0-3", "0-1", False),
    ("64", "max", False),
])
def test_read_back_values_compare_in_the_kernels_spelling(written: str, read: str, same: bool) -> None:
    assert cgroups.same_value(written, read) is same


def test_v1_cgroups_are_made_filled_read_back_joined_and_removed(parent: str) -> None:
    settings = (("memory.limit_in_bytes", "64M"), ("cpu.cfs_quota_us", "50000"), ("pids.max", "32"),
                ("cpuset.cpus", "0"))
    dirs = cgroups.plan(1, parent, "vm-a", settings)
    assert {d.hierarchy for d in dirs} == {_v1("memory"), _v1("cpu"), _v1("pids"), _v1("cpuset")}
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with contextlib.ExitStack() as cleanup:
            cgroups.create(dirs, cleanup, 1)
            for d in dirs:
                for name, value in d.settings:
                    assert cgroups.same_value(value, Path(d.path, name).read_text().strip())
            assert Path(_v1("memory"), parent, "vm-a", "memory.limit_in_bytes").read_text().strip() == str(64 << 20)
            # a new v1 cpuset starts with no mems: the parent's were copied so that a task can join
            assert Path(_v1("cpuset"), parent, "vm-a", "cpuset.mems").read_text().strip() != ""
            cgroups.attach(dirs, sleeper.pid)
            membership = Path(f"/proc/{sleeper.pid}/cgroup").read_text()
            for controller in ("memory", "cpu", "pids", "cpuset"):
                assert any(line.endswith(f"/{parent}/vm-a") and controller in line.split(":")[1].split(",")
                           for line in membership.splitlines()), membership
            sleeper.kill()
            sleeper.wait()
        for d in dirs:
            assert not os.path.exists(os.path.join(d.hierarchy, parent))
    finally:
        sleeper.kill()
        sleeper.wait()


def test_v2_core_files_and_cleanup_on_this_hosts_unified_hierarchy(parent: str) -> None:
    [d] = cgroups.plan(2, f"{parent}/nested", "vm-b", (("cgroup.max.descendants", "3"),))
    with contextlib.ExitStack() as cleanup:
        cgroups.create([d], cleanup, 2)
        assert Path(d.path, "cgroup.max.descendants").read_text().strip() == "3"
        assert os.path.isdir(os.path.join(_v2(), parent, "nested", "vm-b"))
    assert not os.path.exists(os.path.join(_v2(), parent))


@pytest.mark.parametrize(("version", "setting", "message"), [
    (1, ("memory.no_such_knob", "1"), "cgroup memory.no_such_knob: no such file in"),
    (1, ("memory.usage_in_bytes", "1"), "cgroup memory.usage_in_bytes=1: the kernel refused it"),
    (1, ("pids.max", "lots"), "cgroup pids.max=lots: the kernel refused it: Invalid argument"),
    (1, ("memory.limit_in_bytes", "1M"), None),  # the first is fine, the second fails: both go
    (2, ("pids.max", "5"), "the 'pids' controller is not available in"),
])
def test_a_refused_value_leaves_no_directory(parent: str, version: int, setting: tuple[str, str],
                                             message: str | None) -> None:
    settings = (setting,) if message else (setting, ("memory.oom_control", "bogus"))
    dirs = cgroups.plan(version, parent, "vm-c", settings)
    with pytest.raises(cgroups.CgroupError) as err, contextlib.ExitStack() as cleanup:
        cgroups.create(dirs, cleanup, version)
    assert message is None or message in str(err.value), err.value
    assert "\n" not in str(err.value)
    for d in dirs:
        assert not os.path.exists(os.path.join(d.hierarchy, parent))


def test_an_existing_cgroup_for_the_same_id_is_refused_and_kept(parent: str) -> None:
    hierarchy = _v1("pids")
    existing = os.path.join(hierarchy, parent, "vm-d")
    os.makedirs(existing)
    try:
        dirs = cgroups.plan(1, parent, "vm-d", (("pids.max", "5"),))
        with pytest.raises(cgroups.CgroupError, match="exists: a VM with this id runs"), \
                contextlib.ExitStack() as cleanup:
            cgroups.create(dirs, cleanup, 1)
        assert os.path.isdir(existing)  # someone else's: not ours to remove
    finally:
        os.rmdir(existing)
        os.rmdir(os.path.dirname(existing))


def test_join_existing_parent_only_when_it_exists(parent: str) -> None:
    root = _v2()
    assert cgroups.join_existing(root, parent, os.getpid()) is False
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    os.mkdir(os.path.join(root, parent))
    try:
        assert cgroups.join_existing(root, parent, sleeper.pid) is True
        assert f"0::/{parent}" in Path(f"/proc/{sleeper.pid}/cgroup").read_text()
    finally:
        sleeper.kill()
        sleeper.wait()
        cgroups.remove_dir(os.path.join(root, parent))


def test_the_vm_that_made_a_shared_parent_ends_first_without_waiting_or_failing(parent: str) -> None:
    """Two VMs under one parent: the first made it, and ends while the second's cgroup is inside."""
    hierarchy = _v1("pids")
    first, second = contextlib.ExitStack(), contextlib.ExitStack()
    with second:
        with first:
            cgroups.create(cgroups.plan(1, parent, "vm-1", (("pids.max", "5"),)), first, 1)
            cgroups.create(cgroups.plan(1, parent, "vm-2", (("pids.max", "5"),)), second, 1)
        # the first's stack closed without an error, removing only its own cgroup
        assert os.path.isdir(os.path.join(hierarchy, parent, "vm-2"))
        assert not os.path.exists(os.path.join(hierarchy, parent, "vm-1"))
    assert not os.path.exists(os.path.join(hierarchy, parent, "vm-2"))
    os.rmdir(os.path.join(hierarchy, parent))  # nobody's to remove any more: the caller's (the launcher's registry)
