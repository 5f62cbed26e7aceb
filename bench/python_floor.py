#!/usr/bin/env python3
"""The floor under any Python VMM: the interpreter, the KVM calls every VMM makes, one guest entry.

    python3 bench/python_floor.py [-v] [--import MOD[,MOD...]] VMLINUX [MEM_MIB]

No firelet code and nothing imported beyond ``os``, ``fcntl``, ``mmap``,
``ctypes`` and ``struct``: open ``/dev/kvm``, create a VM with an in-kernel
irqchip, map guest RAM, read the kernel file into it, create one vCPU with
KVM's supported CPUID, and enter the guest once (``KVM_RUN``). The vCPU
starts at the reset vector with no firmware there, so the guest stops at
its first instruction: the point is the time from ``exec`` to that first
entry, which ``bench/first_entry.py`` reads from KVM's ``kvm_entry``
tracepoint. No real VMM written in Python can reach its guest sooner.
``--import`` first imports the named modules (e.g. ``msgspec``), to price a
library a VMM would need before its guest can start; ``-v`` prints KVM's
exit reason for that first entry.

Request numbers are from ``include/uapi/linux/kvm.h`` (Linux 6.1).
"""

import ctypes
import fcntl
import mmap
import os
import struct
import sys

KVM_GET_VCPU_MMAP_SIZE = 0xAE04
KVM_CREATE_VM = 0xAE01
KVM_GET_SUPPORTED_CPUID = 0xC008AE05
KVM_CREATE_IRQCHIP = 0xAE60
KVM_SET_USER_MEMORY_REGION = 0x4020AE46  # struct kvm_userspace_memory_region: u32 u32 u64 u64 u64
KVM_CREATE_VCPU = 0xAE41
KVM_SET_CPUID2 = 0x4008AE90
KVM_RUN = 0xAE80
MAP_NORESERVE = 0x4000  # mman-common.h
CPUID_ENTRIES = 100     # struct kvm_cpuid2: u32 nent, u32 pad, then 40-byte kvm_cpuid_entry2s
KVM_RUN_EXIT_REASON = 8  # struct kvm_run: u8 request_interrupt_window, u8 immediate_exit, u8 pad[6], u32 exit_reason
KERNEL_ADDR = 1 << 20   # where x86 kernels load (Documentation/x86/boot.rst)


def main(kernel: str, mem_mib: int) -> int:
    """Make the VM, enter the guest once; KVM's exit reason for that entry."""
    kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    vm = fcntl.ioctl(kvm, KVM_CREATE_VM, 0)
    fcntl.ioctl(vm, KVM_CREATE_IRQCHIP, 0)
    size = mem_mib << 20
    ram = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE)
    address = ctypes.addressof(ctypes.c_char.from_buffer(ram))
    fcntl.ioctl(vm, KVM_SET_USER_MEMORY_REGION, struct.pack("=IIQQQ", 0, 0, 0, size, address))
    with open(kernel, "rb", buffering=0) as f:
        length = os.fstat(f.fileno()).st_size
        f.readinto(memoryview(ram)[KERNEL_ADDR:KERNEL_ADDR + length])
    cpuid = bytearray(struct.pack("=II", CPUID_ENTRIES, 0) + bytes(40 * CPUID_ENTRIES))
    fcntl.ioctl(kvm, KVM_GET_SUPPORTED_CPUID, cpuid, True)
    vcpu = fcntl.ioctl(vm, KVM_CREATE_VCPU, 0)
    fcntl.ioctl(vcpu, KVM_SET_CPUID2, cpuid, True)
    run = mmap.mmap(vcpu, fcntl.ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0))
    fcntl.ioctl(vcpu, KVM_RUN, 0)  # the first guest entry; it exits at once (no firmware)
    exit_reason = struct.unpack_from("=I", run, KVM_RUN_EXIT_REASON)[0]
    run.close()
    return exit_reason


def _cli(argv: list[str]) -> None:
    """Hand-parsed on purpose: argparse would add its own import time to the floor."""
    usage = "usage: python_floor.py [-v] [--import MOD[,MOD...]] VMLINUX [MEM_MIB]"
    verbose = "-v" in argv
    args = [a for a in argv if a != "-v"]
    if args[:1] == ["--import"]:
        if len(args) < 2:
            sys.exit(usage)
        for name in args[1].split(","):
            __import__(name)
        args = args[2:]
    if len(args) not in (1, 2) or not (len(args) == 1 or args[1].isdigit()):
        sys.exit(usage)
    try:
        reason = main(args[0], int(args[1]) if len(args) == 2 else 128)
    except OSError as exc:
        sys.exit(f"python_floor: {exc}")
    if verbose:
        print(f"first guest exit: KVM exit reason {reason}")


if __name__ == "__main__":
    _cli(sys.argv[1:])
