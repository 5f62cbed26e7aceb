"""Smoke test of the nested rig itself: run inside it (FIRELET_IN_RIG=1).

    firelet nested -- python3 -m pytest tests/integration/test_rig.py -q
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import uuid

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
    mounts = {line.split()[1]: line.split()[2] for line in open("/proc/mounts")}
    assert mounts["/"] == "9p"
    for path, fstype in (("/tmp", "tmpfs"), ("/run", "tmpfs"), ("/dev/pts", "devpts"),
                         ("/sys/fs/cgroup", "cgroup2")):
        assert mounts.get(path) == fstype, path
