"""Thin typed bindings to Linux KVM: one class per fd kind, methods named after the ioctls.

``Kvm`` (/dev/kvm) -> ``VmFd`` (a VM) -> ``VcpuFd`` (a vCPU). No policy lives
here: CPUID filtering, register set-up for boot and exit handling belong to
:mod:`firelet.vmm`. Structures are in :mod:`firelet.kvm.structs`, request and
capability numbers in :mod:`firelet.kvm.ioctls`.
"""

from firelet.kvm._base import KvmError
from firelet.kvm.system import KVM_DEVICE, Kvm
from firelet.kvm.vcpu_fd import KICK_SIGNAL, VcpuFd, install_kick_handler, kick_thread
from firelet.kvm.vm_fd import VmFd, dirty_bitmap_size

__all__ = [
    "KICK_SIGNAL",
    "KVM_DEVICE",
    "Kvm",
    "KvmError",
    "VcpuFd",
    "VmFd",
    "dirty_bitmap_size",
    "install_kick_handler",
    "kick_thread",
]
