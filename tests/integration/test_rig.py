"""Smoke test of the nested rig itself: run inside it (FIRELET_IN_RIG=1).

    firelet nested -- python3 -m pytest tests/integration/test_rig.py -q
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.kvm

# include/uapi/linux/kvm.h: KVM_GET_API_VERSION = _IO(KVMIO, 0x00), KVMIO = 0xAE; the API is 12.
KVM_GET_API_VERSION = 0xAE00
KVM_API_VERSION = 12


@pytest.fixture(autouse=True)
def _in_rig() -> None:
    if os.environ.get("FIRELET_IN_RIG") != "1":
        pytest.fail("run this inside the rig: firelet nested -- python3 -m pytest tests/integration/test_rig.py")


def test_dev_kvm_opens_and_speaks_api_12() -> None:
    fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    try:
        assert fcntl.ioctl(fd, KVM_GET_API_VERSION, 0) == KVM_API_VERSION
    finally:
        os.close(fd)


def test_kvm_is_hardware_style() -> None:
    assert os.path.isdir("/sys/module/kvm_amd")


def test_tap_device_can_be_created() -> None:
    name = "fl" + uuid.uuid4().hex[:8]
    add = subprocess.run(["ip", "tuntap", "add", "dev", name, "mode", "tap"], capture_output=True, text=True)
    assert add.returncode == 0, add.stderr
    subprocess.run(["ip", "link", "del", name], check=True)


def test_rig_mounts() -> None:
    mounts = {line.split()[1]: line.split()[2] for line in Path("/proc/mounts").read_text().splitlines()}
    assert mounts["/"] == "9p"
    for path, fstype in (("/tmp", "tmpfs"), ("/run", "tmpfs"), ("/dev/pts", "devpts"),
                         ("/sys/fs/cgroup", "cgroup2")):
        assert mounts.get(path) == fstype, path


def _kvm_fds_by_process() -> dict[int, list[str]]:
    """anon-inode KVM fds (``kvm-vm``, ``kvm-vcpu:N``) held by each process."""
    held: dict[int, list[str]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            targets = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in fds]
        except OSError:  # the process ended meanwhile
            continue
        kvm = sorted(t.removeprefix("anon_inode:") for t in targets if t.startswith("anon_inode:kvm-"))
        if kvm:
            held[int(pid)] = kvm
    return held


def test_a_keeper_vm_lives_for_the_whole_rig() -> None:
    # firelet.devtools.nested.init_script.KVM_KEEPER: without it the outer kernel live-patches its code
    # at each guest's start and end, which hung the emulated machine in ~1-5% of boots.
    held = _kvm_fds_by_process()
    keepers = [pid for pid, fds in held.items() if fds == ["kvm-vcpu:0", "kvm-vm"] and pid != os.getpid()]
    assert keepers, f"no process holds a KVM VM with one vCPU: {held}"
    with open(f"/proc/{keepers[0]}/cmdline", "rb") as f:
        assert b"KVM_CREATE_VM" in f.read()
