"""KVM ioctl and capability numbers equal the kernel header's."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from firelet.kvm import ioctls

# Printed by a C program compiled against /usr/include/linux/kvm.h (Linux 6.1 UAPI).
KERNEL_NUMBERS = {
    "KVM_GET_API_VERSION": 0xAE00,
    "KVM_CREATE_VM": 0xAE01,
    "KVM_RUN": 0xAE80,
    "KVM_GET_REGS": 0x8090AE81,
    "KVM_SET_SREGS": 0x4138AE84,
    "KVM_GET_SUPPORTED_CPUID": 0xC008AE05,
    "KVM_SET_USER_MEMORY_REGION": 0x4020AE46,
    "KVM_GET_LAPIC": 0x8400AE8E,
    "KVM_GET_XSAVE": 0x9000AEA4,
    "KVM_SET_IRQCHIP": 0x8208AE63,
    "KVM_IOEVENTFD": 0x4040AE79,
    "KVM_IRQFD": 0x4020AE76,
    "KVM_GET_MSRS": 0xC008AE88,
    "KVM_SET_CPUID2": 0x4008AE90,
    "KVM_CREATE_PIT2": 0x4040AE77,
    "KVM_GET_VCPU_EVENTS": 0x8040AE9F,
}


@pytest.mark.parametrize("name,number", sorted(KERNEL_NUMBERS.items()))
def test_kvm_ioctl_number_matches_kernel(name: str, number: int) -> None:
    assert getattr(ioctls, name) == number


def test_kvm_every_ioctl_and_cap_matches_gcc(tmp_path: Path) -> None:
    gcc = shutil.which("gcc")
    assert gcc, "gcc is needed to check the KVM ioctl numbers against <linux/kvm.h> (apt-get install gcc)"
    names = sorted(n for n in vars(ioctls) if n.startswith("KVM_") or n == "KVMIO")
    assert len(names) > 80
    src = tmp_path / "numbers.c"
    src.write_text(
        "#include <stdio.h>\n#include <linux/kvm.h>\nint main(void) {\n"
        + "\n".join(f'printf("%lu\\n", (unsigned long)({n}));' for n in names)
        + "\nreturn 0; }\n"
    )
    exe = tmp_path / "numbers"
    subprocess.run([gcc, "-o", str(exe), str(src)], check=True, capture_output=True)
    got = [int(v) for v in subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split()]
    mismatches = [(n, hex(getattr(ioctls, n)), hex(g)) for n, g in zip(names, got, strict=True) if getattr(ioctls, n) != g]
    assert not mismatches


def test_kvm_ioc_rejects_oversized_argument() -> None:
    with pytest.raises(ValueError):
        ioctls._IOW(ioctls.KVMIO, 1, 1 << 14)
