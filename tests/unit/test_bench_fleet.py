"""bench/fleet.py's own parts that need no guest: finding the guest-RAM mapping, QEMU's shared drives."""

from __future__ import annotations

import mmap
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import fleet  # bench/ is no package: its scripts are imported from the path above

from launchers import BootInputs


def test_the_guest_ram_mapping_is_found_and_only_its_touched_pages_count() -> None:
    size = (67 << 20) + 4096  # a size no other mapping of this process has
    ram = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    ram.madvise(mmap.MADV_NOHUGEPAGE)  # 4 KiB pages: a huge page would make the count 2 MiB-grained
    try:
        assert fleet.guest_ram_kib(os.getpid(), size >> 10) == (0, 0)
        for offset in range(0, 3 << 20, mmap.PAGESIZE):
            ram[offset] = 1
        assert fleet.guest_ram_kib(os.getpid(), size >> 10) == (3 << 10, 3 << 10)
    finally:
        ram.close()
    assert fleet.guest_ram_kib(os.getpid(), size >> 10) != (3 << 10, 3 << 10)


def test_a_process_that_is_gone_has_no_guest_ram() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    assert fleet.guest_ram_kib(pid, 1024) == (0, 0)


def test_qemu_shares_the_root_and_signal_drives_read_only(tmp_path: Path) -> None:
    boot = BootInputs(vmlinux=tmp_path / "vmlinux", rootfs=tmp_path / "root.ext4", cmdline="console=ttyS0 reboot=k",
                      drives=(tmp_path / "signal.img",))
    argv = fleet._qemu_argv(boot)
    drives = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-drive"]
    assert len(drives) == 2 and all(d.endswith(",readonly=on") for d in drives)
    assert "reboot=t" in argv[argv.index("-append") + 1]
