"""The VMM boots the project's guest kernel on real KVM (issue: the VMM)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import boot, firelet_cli, read_file_in_image


def test_vmlinux_boots_on_ext4_root_runs_command_and_writes_file(kernel, rootfs: Path) -> None:
    result = firelet_cli(
        "run", "--kernel", str(kernel.vmlinux), "--rootfs", str(rootfs),
        "--cmd", "echo written-by-guest > /root/proof; sync; echo guest-says-hello",
    )
    assert result.returncode == 0, result.stderr + result.stdout[-2000:]
    assert "guest-says-hello" in result.stdout
    assert "FIRELET-EXIT status=0" in result.stdout.replace("\r", "")
    assert read_file_in_image(rootfs, "/root/proof").strip() == "written-by-guest"


def test_bzimage_boots_on_ext4_root(kernel, rootfs: Path) -> None:
    outcome, text, status = boot(kernel.bzimage, rootfs=rootfs, cmd="echo bz > /root/bz; sync; uname -r")
    assert outcome.clean, f"{outcome}\n{text[-3000:]}"
    assert status == 0, text[-3000:]
    assert read_file_in_image(rootfs, "/root/bz").strip() == "bz"


@pytest.mark.parametrize("vcpus", [1, 4])
def test_guest_sees_exactly_n_cpus(kernel, rootfs: Path, vcpus: int) -> None:
    outcome, text, status = boot(
        kernel.vmlinux, rootfs=rootfs, read_only=True, vcpus=vcpus,
        cmd="echo cpus=$(grep -c ^processor /proc/cpuinfo) online=$(cat /sys/devices/system/cpu/online)",
    )
    assert outcome.clean and status == 0, text[-3000:]
    assert f"cpus={vcpus}" in text
    online = "0" if vcpus == 1 else f"0-{vcpus - 1}"
    assert f"online={online}" in text


@pytest.mark.parametrize("mem_mib", [128, 1024])
def test_guest_memory_matches(kernel, rootfs: Path, mem_mib: int) -> None:
    outcome, text, status = boot(
        kernel.vmlinux, rootfs=rootfs, read_only=True, mem_mib=mem_mib,
        cmd="grep MemTotal /proc/meminfo",
    )
    assert outcome.clean and status == 0, text[-3000:]
    total_kib = int(re.search(r"MemTotal:\s+(\d+) kB", text).group(1))
    # The kernel keeps its own image and reserved low memory out of MemTotal.
    assert mem_mib * 1024 * 0.85 < total_kib <= mem_mib * 1024


def test_initrd_boot(kernel, initramfs: Path) -> None:
    outcome, text, status = boot(kernel.vmlinux, initrd=initramfs, cmd="echo from-initramfs; cat /proc/cmdline")
    assert outcome.clean and status == 0, text[-3000:]
    assert "from-initramfs" in text


def test_read_only_drive_refuses_writes(kernel, rootfs: Path, tmp_path: Path) -> None:
    data = tmp_path / "data.img"
    data.write_bytes(b"\xab" * (1 << 20))
    outcome, text, status = boot(
        kernel.vmlinux, rootfs=rootfs, read_only=True,
        drives=[{"drive_id": "data", "path_on_host": str(data), "is_root_device": False, "is_read_only": True}],
        cmd="touch /newfile; echo touch=$?; dd if=/dev/zero of=/dev/vdb bs=4096 count=1 conv=fsync; echo dd=$?;"
        " cat /sys/block/vdb/ro",
    )
    assert outcome.clean and status == 0, text[-3000:]
    assert "touch=0" not in text and "touch=" in text
    assert "dd=0" not in text and "dd=" in text
    assert data.read_bytes() == b"\xab" * (1 << 20)



SIGNAL_BOOTED = "devmem 0xd0000000 8 123; echo signalled"  # Firecracker's boot-timer byte, from the guest


def test_firelet_run_boot_timer_prints_the_boot_time(kernel, rootfs: Path) -> None:
    result = firelet_cli("run", "--kernel", str(kernel.vmlinux), "--rootfs", str(rootfs), "--ro",
                         "--console", "none", "--cmd", SIGNAL_BOOTED, "--boot-timer")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and re.fullmatch(r"firelet: Guest-boot-time = +\d+ us \d+ ms, +\d+ CPU us \d+ CPU ms",
                                            lines[0]), result.stderr


def test_microvm_boot_timer_reports_to_a_callable(kernel, rootfs: Path) -> None:
    lines: list[str] = []
    outcome, text, status = boot(kernel.vmlinux, rootfs=rootfs, read_only=True, cmd=SIGNAL_BOOTED,
                                 boot_timer=lines.append)
    assert outcome.clean and status == 0 and "signalled" in text, text[-3000:]
    assert len(lines) == 1 and lines[0].startswith("Guest-boot-time = "), lines
