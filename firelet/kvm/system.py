"""The KVM system handle: ``/dev/kvm``, its capabilities, and VM creation."""

from __future__ import annotations

import ctypes
import errno
import os

from firelet.errors import FireletError
from firelet.kvm import ioctls as K
from firelet.kvm import structs as S
from firelet.kvm._base import KvmError, ioctl
from firelet.kvm.vm_fd import VmFd

KVM_DEVICE = "/dev/kvm"
KVM_API_VERSION = 12  # linux/kvm.h; the only stable version since Linux 2.6.22
_MAX_CPUID_ENTRIES = 4096


class Kvm:
    """An open ``/dev/kvm``; checks the API version on open."""

    def __init__(self, path: str = KVM_DEVICE) -> None:
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise FireletError(
                f"no {path}: this host has no KVM; load kvm_intel/kvm_amd or run inside the nested rig"
            ) from None
        except PermissionError:
            raise FireletError(
                f"no permission on {path}: add your user to group kvm or run as root"
            ) from None
        except OSError as exc:
            raise FireletError(f"cannot open {path}: {exc.strerror}") from None
        try:
            self.api_version()
        except FireletError:
            self.close()
            raise

    def api_version(self) -> int:
        """KVM_GET_API_VERSION; anything but 12 is an error (no other version is stable)."""
        try:
            version = ioctl(self.fd, K.KVM_GET_API_VERSION)
        except KvmError as exc:
            raise FireletError(f"{self.path} is not a KVM device ({exc}); check the device path") from None
        if version != KVM_API_VERSION:
            raise FireletError(
                f"{self.path} speaks KVM API version {version}, firelet needs {KVM_API_VERSION}; use a newer kernel"
            )
        return version

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION: 0 if unsupported, else 1 or a capability-specific value."""
        return ioctl(self.fd, K.KVM_CHECK_EXTENSION, cap)

    def vcpu_mmap_size(self) -> int:
        """Bytes to mmap from a vCPU fd: the ``kvm_run`` page plus the PIO/coalesced-MMIO pages."""
        return ioctl(self.fd, K.KVM_GET_VCPU_MMAP_SIZE)

    def supported_cpuid(self, max_entries: int = 256) -> ctypes.Structure:
        """KVM_GET_SUPPORTED_CPUID as a ``kvm_cpuid2`` holding exactly the returned entries.

        The kernel answers E2BIG when the buffer is too small, so the size is
        doubled until it fits.
        """
        n = max_entries
        while True:
            cpuid = S.make_kvm_cpuid2(n)
            try:
                ioctl(self.fd, K.KVM_GET_SUPPORTED_CPUID, cpuid)
            except KvmError as exc:
                if exc.errno == errno.E2BIG and n < _MAX_CPUID_ENTRIES:
                    n *= 2
                    continue
                raise
            return S.make_kvm_cpuid2(cpuid.entries[: cpuid.nent])

    def msr_index_list(self) -> list[int]:
        """KVM_GET_MSR_INDEX_LIST: the MSRs a VMM should save and restore."""
        probe = S.make_kvm_msr_list(0)
        try:
            ioctl(self.fd, K.KVM_GET_MSR_INDEX_LIST, probe)
        except KvmError as exc:  # E2BIG with nmsrs set to the needed count
            if exc.errno != errno.E2BIG:
                raise
        msr_list = S.make_kvm_msr_list(probe.nmsrs)
        ioctl(self.fd, K.KVM_GET_MSR_INDEX_LIST, msr_list)
        return list(msr_list.indices[: msr_list.nmsrs])

    def create_vm(self) -> VmFd:
        """KVM_CREATE_VM (machine type 0); the VM keeps working after this handle is closed."""
        vm_fd = ioctl(self.fd, K.KVM_CREATE_VM, 0)
        return VmFd(vm_fd, self.vcpu_mmap_size())

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Kvm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
