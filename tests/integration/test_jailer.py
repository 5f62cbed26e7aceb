"""A jailed firelet-vmm boots the guest through its API socket inside the jail (issue #14, "Done when").

The first test's VMM runs in a network namespace the test made (the jailer's --netns),
which holds the guest's TAP; the guest pings the TAP's host address there, once through
the VMM's userspace path and once through the jail's /dev/vhost-net.

Runs in the nested rig: real KVM, cgroup2 with every controller at /sys/fs/cgroup, /tmp a
tmpfs. The kernel and the root image are placed in the jail's root by the test, as a
Firecracker user places them (a copy, a hard link); the VMM sees them at /vmlinux and
/rootfs.ext4. The VMM runs as an unprivileged uid, PID 1 of its own PID namespace,
under memory.max, pids.max and cpu.max, which are read back from the host side.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from firelet.devtools.cache import repo_root
from firelet.devtools.images import guest_cmdline_for

import netns
from conftest import BOOT_TIMEOUT_S, api_ok, read_file_in_image

guest_netns = netns.guest_netns  # the fixture, found under its name

UID, GID = 4242, 4243
CGROUP2 = "/sys/fs/cgroup"
MARKER = "jailed-guest-wrote-its-disk"
PINGED = "jailed-guest-pinged-its-host"
LIMITS = {"memory.max": str(768 << 20), "pids.max": "64", "cpu.max": "100000 100000"}




def _host_mounts() -> set[str]:
    return {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()}


@pytest.fixture
def base() -> Iterator[Path]:
    """A short chroot base on /tmp (tmpfs in the rig): the API socket's host path must fit sun_path."""
    path = Path(tempfile.mkdtemp(prefix="j", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _prepare_jail(base: Path, vm_id: str, kernel: Any, rootfs: Path) -> Path:
    root = base / "firelet-vmm" / vm_id / "root"
    root.mkdir(parents=True)
    shutil.copy(kernel.vmlinux, root / "vmlinux")
    os.link(rootfs, root / "rootfs.ext4")  # the same inode: the guest's writes land in the test's image
    os.chown(root / "rootfs.ext4", UID, GID)  # the VMM opens it read-write as its own user
    return root


def _start_jailer(base: Path, vm_id: str, parent: str, limits: dict[str, str],
                  extra: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    if "cgroup2" not in {line.split()[2] for line in Path("/proc/mounts").read_text().splitlines()
                         if line.split()[1] == CGROUP2}:
        pytest.fail(f"no cgroup2 at {CGROUP2}: run this in the nested rig (`firelet nested`)")
    vmm = Path(sys.executable).parent / "firelet-vmm"
    cgroup_flags = [arg for name, value in limits.items() for arg in ("--cgroup", f"{name}={value}")]
    env = dict(os.environ, PYTHONPATH=str(repo_root()))
    return subprocess.Popen(
        [sys.executable, "-m", "firelet.jailer", "--id", vm_id, "--exec-file", str(vmm), "--uid", str(UID),
         "--gid", str(GID), "--chroot-base-dir", str(base), "--new-pid-ns", "--cgroup-version", "2",
         "--parent-cgroup", parent, *cgroup_flags, *extra, "--", "--api-sock", "/run/api.sock"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)


def _wait_for_socket(sock: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while not sock.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the jailer ended ({proc.returncode}): {proc.stderr.read().decode()}")
        assert time.monotonic() < deadline, "no API socket in the jail within 120 s"
        time.sleep(0.1)


def _boot(sock: Path, command: str, mem_mib: int, tap: netns.GuestTap | None = None, vhost: bool = False) -> None:
    ip = f"{tap.guest.boot_arg()} " if tap is not None else ""
    api_ok(sock, "PUT", "/boot-source", {"kernel_image_path": "/vmlinux",
                                      "boot_args": f"console=ttyS0 reboot=k panic=-1 {ip}{guest_cmdline_for(command)}"})
    if tap is not None:
        api_ok(sock, "PUT", "/network-interfaces/eth0",
               {"iface_id": "eth0", "host_dev_name": tap.name} | ({"vhost": True} if vhost else {}))
    api_ok(sock, "PUT", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": "/rootfs.ext4",
                                        "is_root_device": True, "is_read_only": False})
    api_ok(sock, "PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": mem_mib})
    api_ok(sock, "PUT", "/serial", {"serial_out_path": "/serial.out"})
    api_ok(sock, "PUT", "/actions", {"action_type": "InstanceStart"})


@pytest.mark.parametrize("vhost", [False, True], ids=["userspace", "vhost"])
def test_jailed_vmm_boots_the_guest_through_its_api_inside_the_jail(kernel, rootfs: Path, base: Path,
                                                                    guest_netns, vhost: bool) -> None:
    """With ``vhost``, eth0 runs on the jail's /dev/vhost-net node, under the VMM's seccomp filters."""
    vm_id, parent = "jailed-1", f"firelet-it-{uuid.uuid4().hex[:8]}"
    net = guest_netns(taps=1, owner=UID)  # the jailed VMM's uid may attach to its TAP
    tap = net.taps[0]
    root = _prepare_jail(base, vm_id, kernel, rootfs)
    mounts_before = _host_mounts()
    proc = _start_jailer(base, vm_id, parent, LIMITS, ("--netns", net.path))
    cgroup = Path(CGROUP2, parent, vm_id)
    try:
        _wait_for_socket(root / "run" / "api.sock", proc)
        read_back = {name: (cgroup / name).read_text().strip() for name in LIMITS}
        pid = int((root / "firelet-vmm.pid").read_text())
        in_cgroup = (cgroup / "cgroup.procs").read_text().split()
        status = Path(f"/proc/{pid}/status").read_text()
        _boot(root / "run" / "api.sock", f"echo {MARKER} > /root/jailed; sync; echo {MARKER}; "
              f"ping -c 2 -W 10 {tap.host.ip} && echo {PINGED}", 256, tap, vhost)
        code = proc.wait(BOOT_TIMEOUT_S)
        err = proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    serial = (root / "serial.out").read_text(errors="replace").replace("\r", "")
    assert code == 0, err + serial[-3000:]
    assert read_back == LIMITS
    assert str(pid) in in_cgroup
    assert "NoNewPrivs:\t1" in status and f"Uid:\t{UID}\t{UID}" in status and "CapEff:\t0000000000000000" in status
    assert "FIRELET-EXIT status=0" in serial and MARKER in serial
    assert f"\n{PINGED}" in serial  # through its TAP, in the namespace the VMM was jailed into
    assert read_file_in_image(rootfs, "/root/jailed").strip() == MARKER
    # what the user placed and the VMM wrote stays; everything the jailer made is gone
    assert sorted(p.name for p in root.iterdir()) == ["rootfs.ext4", "serial.out", "vmlinux"]
    assert not Path(CGROUP2, parent).exists()
    assert _host_mounts() == mounts_before


def test_a_guest_bigger_than_memory_max_ends_in_a_reported_oom_and_a_clean_jail(kernel, rootfs: Path,
                                                                                 base: Path) -> None:
    vm_id, parent = "jailed-oom", f"firelet-it-{uuid.uuid4().hex[:8]}"
    root = _prepare_jail(base, vm_id, kernel, rootfs)
    mounts_before = _host_mounts()
    proc = _start_jailer(base, vm_id, parent, {"memory.max": str(160 << 20), "pids.max": "64"})
    try:
        _wait_for_socket(root / "run" / "api.sock", proc)
        # the guest fills 300 MiB of its 384: more than the VMM's cgroup may hold
        _boot(root / "run" / "api.sock", "dd if=/dev/zero of=/dev/null bs=300M count=1; echo survived", 384)
        code = proc.wait(BOOT_TIMEOUT_S)
        err = proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    serial = (root / "serial.out").read_text(errors="replace") if (root / "serial.out").exists() else ""
    assert code == 128 + 9, err + serial[-2000:]
    assert "the VMM ran out of memory: the OOM killer ended it" in err, err
    assert "survived" not in serial
    assert not Path(CGROUP2, parent).exists()
    assert _host_mounts() == mounts_before
    assert {p.name for p in root.iterdir()} <= {"rootfs.ext4", "serial.out", "vmlinux"}
