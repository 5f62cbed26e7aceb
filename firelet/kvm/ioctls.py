"""KVM ioctl request numbers and capability numbers, named as in ``linux/kvm.h``.

The numbers are computed with the generic Linux ioctl encoding
(``include/uapi/asm-generic/ioctl.h``) from the structures in
:mod:`firelet.kvm.structs`, so a wrong structure size shows up as a wrong
request number; ``tests/unit/test_kvm_ioctls.py`` pins them to the C header's.
"""

from __future__ import annotations

import ctypes

from firelet.kvm import structs as s

# asm-generic/ioctl.h: nr 8 bits, type 8 bits, size 14 bits, direction 2 bits.
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = 8
_IOC_SIZESHIFT = 16
_IOC_DIRSHIFT = 30
_IOC_SIZEMASK = (1 << 14) - 1
_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2

KVMIO = 0xAE  # linux/kvm.h


def _IOC(direction: int, type_: int, nr: int, size: int) -> int:
    if not 0 <= size <= _IOC_SIZEMASK:
        raise ValueError(f"ioctl argument size {size} does not fit in 14 bits")
    return (direction << _IOC_DIRSHIFT) | (type_ << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT) | (size << _IOC_SIZESHIFT)


def _size(arg: type | int) -> int:
    return arg if isinstance(arg, int) else ctypes.sizeof(arg)


def _IO(type_: int, nr: int) -> int:
    return _IOC(_IOC_NONE, type_, nr, 0)


def _IOR(type_: int, nr: int, arg: type | int) -> int:
    """Kernel writes the argument (userspace reads it)."""
    return _IOC(_IOC_READ, type_, nr, _size(arg))


def _IOW(type_: int, nr: int, arg: type | int) -> int:
    """Userspace writes the argument (kernel reads it)."""
    return _IOC(_IOC_WRITE, type_, nr, _size(arg))


def _IOWR(type_: int, nr: int, arg: type | int) -> int:
    return _IOC(_IOC_READ | _IOC_WRITE, type_, nr, _size(arg))


# --- system ioctls (on the /dev/kvm fd) ---
KVM_GET_API_VERSION = _IO(KVMIO, 0x00)
KVM_CREATE_VM = _IO(KVMIO, 0x01)
KVM_GET_MSR_INDEX_LIST = _IOWR(KVMIO, 0x02, s.kvm_msr_list)
KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03)
KVM_GET_VCPU_MMAP_SIZE = _IO(KVMIO, 0x04)
KVM_GET_SUPPORTED_CPUID = _IOWR(KVMIO, 0x05, s.kvm_cpuid2)
KVM_GET_MSR_FEATURE_INDEX_LIST = _IOWR(KVMIO, 0x0A, s.kvm_msr_list)

# --- VM ioctls ---
KVM_CREATE_VCPU = _IO(KVMIO, 0x41)
KVM_GET_DIRTY_LOG = _IOW(KVMIO, 0x42, s.kvm_dirty_log)
KVM_SET_USER_MEMORY_REGION = _IOW(KVMIO, 0x46, s.kvm_userspace_memory_region)
KVM_SET_TSS_ADDR = _IO(KVMIO, 0x47)
KVM_SET_IDENTITY_MAP_ADDR = _IOW(KVMIO, 0x48, ctypes.c_uint64)
KVM_CREATE_IRQCHIP = _IO(KVMIO, 0x60)
KVM_IRQ_LINE = _IOW(KVMIO, 0x61, s.kvm_irq_level)
KVM_GET_IRQCHIP = _IOWR(KVMIO, 0x62, s.kvm_irqchip)
KVM_SET_IRQCHIP = _IOR(KVMIO, 0x63, s.kvm_irqchip)  # sic: _IOR in the kernel header
KVM_SET_GSI_ROUTING = _IOW(KVMIO, 0x6A, s.kvm_irq_routing)
KVM_IRQFD = _IOW(KVMIO, 0x76, s.kvm_irqfd)
KVM_CREATE_PIT2 = _IOW(KVMIO, 0x77, s.kvm_pit_config)
KVM_IOEVENTFD = _IOW(KVMIO, 0x79, s.kvm_ioeventfd)
KVM_REGISTER_COALESCED_MMIO = _IOW(KVMIO, 0x67, s.kvm_coalesced_mmio_zone)
KVM_UNREGISTER_COALESCED_MMIO = _IOW(KVMIO, 0x68, s.kvm_coalesced_mmio_zone)
#: The coalesced ring's page within a vCPU's mapping (asm/kvm.h, x86: after kvm_run and the PIO page).
KVM_COALESCED_MMIO_PAGE_OFFSET = 2
KVM_SET_CLOCK = _IOW(KVMIO, 0x7B, s.kvm_clock_data)
KVM_GET_CLOCK = _IOR(KVMIO, 0x7C, s.kvm_clock_data)
KVM_GET_PIT2 = _IOR(KVMIO, 0x9F, s.kvm_pit_state2)
KVM_SET_PIT2 = _IOW(KVMIO, 0xA0, s.kvm_pit_state2)
KVM_SIGNAL_MSI = _IOW(KVMIO, 0xA5, s.kvm_msi)
KVM_ENABLE_CAP = _IOW(KVMIO, 0xA3, s.kvm_enable_cap)  # on the VM fd (and vCPU fd)

# --- vCPU ioctls ---
KVM_RUN = _IO(KVMIO, 0x80)
KVM_GET_REGS = _IOR(KVMIO, 0x81, s.kvm_regs)
KVM_SET_REGS = _IOW(KVMIO, 0x82, s.kvm_regs)
KVM_GET_SREGS = _IOR(KVMIO, 0x83, s.kvm_sregs)
KVM_SET_SREGS = _IOW(KVMIO, 0x84, s.kvm_sregs)
KVM_GET_MSRS = _IOWR(KVMIO, 0x88, s.kvm_msrs)
KVM_SET_MSRS = _IOW(KVMIO, 0x89, s.kvm_msrs)
KVM_GET_FPU = _IOR(KVMIO, 0x8C, s.kvm_fpu)
KVM_SET_FPU = _IOW(KVMIO, 0x8D, s.kvm_fpu)
KVM_GET_LAPIC = _IOR(KVMIO, 0x8E, s.kvm_lapic_state)
KVM_SET_LAPIC = _IOW(KVMIO, 0x8F, s.kvm_lapic_state)
KVM_SET_CPUID2 = _IOW(KVMIO, 0x90, s.kvm_cpuid2)
KVM_GET_CPUID2 = _IOWR(KVMIO, 0x91, s.kvm_cpuid2)
KVM_GET_MP_STATE = _IOR(KVMIO, 0x98, s.kvm_mp_state)
KVM_SET_MP_STATE = _IOW(KVMIO, 0x99, s.kvm_mp_state)
KVM_NMI = _IO(KVMIO, 0x9A)
KVM_GET_VCPU_EVENTS = _IOR(KVMIO, 0x9F, s.kvm_vcpu_events)
KVM_SET_VCPU_EVENTS = _IOW(KVMIO, 0xA0, s.kvm_vcpu_events)
KVM_GET_DEBUGREGS = _IOR(KVMIO, 0xA1, s.kvm_debugregs)
KVM_SET_DEBUGREGS = _IOW(KVMIO, 0xA2, s.kvm_debugregs)
KVM_SET_TSC_KHZ = _IO(KVMIO, 0xA2)
KVM_GET_TSC_KHZ = _IO(KVMIO, 0xA3)
KVM_GET_XSAVE = _IOR(KVMIO, 0xA4, s.kvm_xsave)
KVM_SET_XSAVE = _IOW(KVMIO, 0xA5, s.kvm_xsave)
KVM_GET_XCRS = _IOR(KVMIO, 0xA6, s.kvm_xcrs)
KVM_SET_XCRS = _IOW(KVMIO, 0xA7, s.kvm_xcrs)
KVM_KVMCLOCK_CTRL = _IO(KVMIO, 0xAD)

# --- capabilities (argument of KVM_CHECK_EXTENSION) ---
KVM_CAP_IRQCHIP = 0
KVM_CAP_HLT = 1
KVM_CAP_USER_MEMORY = 3
KVM_CAP_SET_TSS_ADDR = 4
KVM_CAP_EXT_CPUID = 7
KVM_CAP_CLOCKSOURCE = 8
KVM_CAP_NR_VCPUS = 9
KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_PIT = 11
KVM_CAP_MP_STATE = 14
KVM_CAP_COALESCED_MMIO = 15
KVM_CAP_SYNC_MMU = 16
KVM_CAP_USER_NMI = 22
KVM_CAP_IRQ_ROUTING = 25
KVM_CAP_IRQ_INJECT_STATUS = 26
KVM_CAP_IRQFD = 32
KVM_CAP_PIT2 = 33
KVM_CAP_PIT_STATE2 = 35
KVM_CAP_IOEVENTFD = 36
KVM_CAP_SET_IDENTITY_MAP_ADDR = 37
KVM_CAP_ADJUST_CLOCK = 39
KVM_CAP_INTERNAL_ERROR_DATA = 40
KVM_CAP_VCPU_EVENTS = 41
KVM_CAP_DEBUGREGS = 50
KVM_CAP_XSAVE = 55
KVM_CAP_XCRS = 56
KVM_CAP_TSC_CONTROL = 60
KVM_CAP_GET_TSC_KHZ = 61
KVM_CAP_MAX_VCPUS = 66
KVM_CAP_TSC_DEADLINE_TIMER = 72
KVM_CAP_KVMCLOCK_CTRL = 76
KVM_CAP_SIGNAL_MSI = 77
KVM_CAP_READONLY_MEM = 81
KVM_CAP_IRQFD_RESAMPLE = 82
KVM_CAP_SPLIT_IRQCHIP = 121
KVM_CAP_IOEVENTFD_ANY_LENGTH = 122
KVM_CAP_MAX_VCPU_ID = 128
KVM_CAP_X2APIC_API = 129
KVM_CAP_IMMEDIATE_EXIT = 136
KVM_CAP_GET_MSR_FEATURES = 153
KVM_CAP_COALESCED_PIO = 162
KVM_CAP_XSAVE2 = 208
