"""The boot path on the project's real guest kernel (the vmlinux and bzImage of one build).

Parsing and placement only: booting them is tested in test_vmm_boot.py. These
catch what hand-made images cannot, such as a real vmlinux's segment layout and
PVH note, or a real bzImage's setup header.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest

from firelet.arch.x86_64 import bootparams, layout, loader, pvh
from firelet.arch.x86_64.ram import guest_ram
from firelet.memory.guest import GuestMemory

MiB = layout.MiB


@pytest.fixture
def mem() -> Iterator[GuestMemory]:
    memory = guest_ram(256 * MiB)
    yield memory
    memory.close()


def test_real_vmlinux_loads_with_a_pvh_entry(kernel, mem: GuestMemory) -> None:
    image = loader.load_kernel(mem, kernel.vmlinux)
    assert image.kind == "elf"
    assert image.pvh_entry is not None and image.pvh_entry < 1 << 32
    assert any(s.guest_addr <= image.entry < s.guest_addr + s.mem_size for s in image.segments)
    first = min(image.segments, key=lambda s: s.guest_addr)
    with open(kernel.vmlinux, "rb") as f:
        f.seek(first.file_offset)
        assert mem.read(first.guest_addr, 4096) == f.read(4096)
    start_info = pvh.write_pvh_start_info(mem, "console=ttyS0", kernel=image)
    assert mem.read_u32(start_info) == pvh.XEN_HVM_START_MAGIC_VALUE


def test_real_bzimage_header_and_placement(kernel, mem: GuestMemory, tmp_path) -> None:
    image = loader.load_kernel(mem, kernel.bzimage)
    assert image.kind == "bzimage"
    assert image.entry == layout.HIMEM_START + 0x200
    raw = kernel.bzimage.read_bytes()
    assert image.setup_header == raw[0x1F1 : min(0x202 + raw[0x201], loader.HDR_LIMIT)]
    assert mem.read(layout.HIMEM_START, 512) == raw[image.segments[0].file_offset :][:512]
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"\x07" * (3 * MiB + 5))
    addr, size = loader.load_initrd(mem, initrd, image)
    assert addr >= image.end and addr + size <= min(256 * MiB, image.initrd_addr_max + 1)
    loader.write_cmdline(mem, "console=ttyS0", kernel=image)
    bootparams.write_boot_params(mem, image, 14, (addr, size))
    zp = layout.ZERO_PAGE_START
    assert mem.read(zp + 0x202, 4) == b"HdrS"
    assert struct.unpack("<II", mem.read(zp + 0x218, 8)) == (addr, size)
    assert mem.read_u8(zp + 0x210) == 0xFF
