"""Bad input to `firelet run` gets one line and a non-zero exit, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import firelet_cli


def _one_line_error(result) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_missing_kernel(tmp_path: Path) -> None:
    line = _one_line_error(firelet_cli("run", "--kernel", str(tmp_path / "nope")))
    assert "no such file" in line


def test_unreadable_kernel(tmp_path: Path) -> None:
    # Root reads anything: make the path a directory instead, which no VMM can load.
    line = _one_line_error(firelet_cli("run", "--kernel", str(tmp_path)))
    assert "not a regular file" in line


def test_not_a_kernel(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus"
    bogus.write_bytes(b"this is not a kernel" * 100)
    line = _one_line_error(firelet_cli("run", "--kernel", str(bogus)))
    assert "kernel" in line


@pytest.mark.parametrize("mem", ["1", "999999999"])
def test_memory_out_of_range(kernel, mem: str) -> None:
    line = _one_line_error(firelet_cli("run", "--kernel", str(kernel.vmlinux), "--mem", mem))
    assert "mem_size_mib" in line


@pytest.mark.parametrize("vcpus", ["0", "33"])
def test_vcpus_out_of_range(kernel, vcpus: str) -> None:
    line = _one_line_error(firelet_cli("run", "--kernel", str(kernel.vmlinux), "--vcpus", vcpus))
    assert "vcpu_count" in line


def test_missing_image(kernel, tmp_path: Path) -> None:
    line = _one_line_error(firelet_cli("run", "--kernel", str(kernel.vmlinux), "--rootfs", str(tmp_path / "none.ext4")))
    assert "no such file" in line


def test_missing_dev_kvm(kernel, tmp_path: Path) -> None:
    line = _one_line_error(
        firelet_cli("run", "--kernel", str(kernel.vmlinux), "--kvm-device", str(tmp_path / "kvm"))
    )
    assert "kvm" in line.lower()


def _tiny_elf(code: bytes, load_addr: int = 0x100000) -> bytes:
    """A minimal x86-64 ELF executable with one PT_LOAD holding ``code`` at ``load_addr``."""
    import struct

    ehdr_size, phdr_size = 64, 56
    offset = ehdr_size + phdr_size
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", ident, 2, 62, 1, load_addr, ehdr_size, 0, 0,
                       ehdr_size, phdr_size, 1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, offset, load_addr, load_addr, len(code), len(code), 0x1000)
    return ehdr + phdr + code


def test_guest_that_triple_faults(tmp_path: Path) -> None:
    # `ud2` with the boot IDT empty: #UD cannot be delivered, nor the #DF after it.
    image = tmp_path / "ud2.elf"
    image.write_bytes(_tiny_elf(b"\x0f\x0b"))
    result = firelet_cli("run", "--kernel", str(image), "--console", "none", timeout=120)
    line = _one_line_error(result)
    assert "triple-fault" in line and "rip=" in line and "cr3=" in line  # where it faulted
