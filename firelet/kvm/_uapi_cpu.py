"""ctypes mirrors of the x86-64 vCPU state structures of ``asm/kvm.h`` (Linux 6.1 UAPI).

Part of :mod:`firelet.kvm.structs`, which re-exports everything here; import from there.
"""

from __future__ import annotations

import ctypes

_u8 = ctypes.c_uint8
_u16 = ctypes.c_uint16
_u32 = ctypes.c_uint32
_s32 = ctypes.c_int32
_u64 = ctypes.c_uint64
_s64 = ctypes.c_int64
# C ``char`` arrays are unsigned bytes here: ctypes turns a c_char array field into
# ``bytes`` cut at the first NUL, which would lose LAPIC and irqchip register data.
_char = ctypes.c_uint8

# --- asm/kvm.h (x86) ---
KVM_NR_INTERRUPTS = 256
KVM_APIC_REG_SIZE = 0x400
KVM_IOAPIC_NUM_PINS = 24
KVM_IRQCHIP_PIC_MASTER = 0
KVM_IRQCHIP_PIC_SLAVE = 1
KVM_IRQCHIP_IOAPIC = 2
KVM_NR_IRQCHIPS = 3
KVM_MAX_XCRS = 16
KVM_PIT_FLAGS_HPET_LEGACY = 0x1
KVM_PIT_FLAGS_SPEAKER_DATA_ON = 0x2
KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1 << 0  # sic: the kernel's spelling
KVM_CPUID_FLAG_STATEFUL_FUNC = 1 << 1
KVM_CPUID_FLAG_STATE_READ_NEXT = 1 << 2
KVM_VCPUEVENT_VALID_NMI_PENDING = 0x01
KVM_VCPUEVENT_VALID_SIPI_VECTOR = 0x02
KVM_VCPUEVENT_VALID_SHADOW = 0x04
KVM_VCPUEVENT_VALID_SMM = 0x08
KVM_VCPUEVENT_VALID_PAYLOAD = 0x10
KVM_VCPUEVENT_VALID_TRIPLE_FAULT = 0x20


class _Struct(ctypes.Structure):
    """Base with a field dump for debugging and test failure messages."""

    def __repr__(self) -> str:
        parts = []
        for name, *_ in self._fields_:
            if not name.startswith("_"):
                value = getattr(self, name)
                parts.append(f"{name}={value:#x}" if isinstance(value, int) else f"{name}=...")
        return f"{type(self).__name__}({', '.join(parts)})"


# --- asm/kvm.h: vCPU registers ---
class kvm_regs(_Struct):
    _fields_ = [
        (name, _u64)
        for name in (
            "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
            "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
            "rip", "rflags",
        )
    ]  # fmt: skip


class kvm_segment(_Struct):
    _fields_ = [
        ("base", _u64),
        ("limit", _u32),
        ("selector", _u16),
        ("type", _u8),
        ("present", _u8),
        ("dpl", _u8),
        ("db", _u8),
        ("s", _u8),
        ("l", _u8),
        ("g", _u8),
        ("avl", _u8),
        ("unusable", _u8),
        ("padding", _u8),
    ]


class kvm_dtable(_Struct):
    _fields_ = [("base", _u64), ("limit", _u16), ("padding", _u16 * 3)]


class kvm_sregs(_Struct):
    _fields_ = [
        *((name, kvm_segment) for name in ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")),
        ("gdt", kvm_dtable),
        ("idt", kvm_dtable),
        *((name, _u64) for name in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base")),
        ("interrupt_bitmap", _u64 * ((KVM_NR_INTERRUPTS + 63) // 64)),
    ]


class kvm_fpu(_Struct):
    _fields_ = [
        ("fpr", (_u8 * 16) * 8),
        ("fcw", _u16),
        ("fsw", _u16),
        ("ftwx", _u8),
        ("pad1", _u8),
        ("last_opcode", _u16),
        ("last_ip", _u64),
        ("last_dp", _u64),
        ("xmm", (_u8 * 16) * 16),
        ("mxcsr", _u32),
        ("pad2", _u32),
    ]


class kvm_msr_entry(_Struct):
    _fields_ = [("index", _u32), ("reserved", _u32), ("data", _u64)]


class kvm_msrs(_Struct):
    """Header only (flexible ``entries``); use :func:`make_kvm_msrs` for a usable one."""

    _fields_ = [("nmsrs", _u32), ("pad", _u32), ("entries", kvm_msr_entry * 0)]


class kvm_msr_list(_Struct):
    """Header only (flexible ``indices``); use :func:`make_kvm_msr_list`."""

    _fields_ = [("nmsrs", _u32), ("indices", _u32 * 0)]


class kvm_cpuid_entry2(_Struct):
    _fields_ = [
        ("function", _u32),
        ("index", _u32),
        ("flags", _u32),
        ("eax", _u32),
        ("ebx", _u32),
        ("ecx", _u32),
        ("edx", _u32),
        ("padding", _u32 * 3),
    ]


class kvm_cpuid2(_Struct):
    """Header only (flexible ``entries``); use :func:`make_kvm_cpuid2` for a usable one."""

    _fields_ = [("nent", _u32), ("padding", _u32), ("entries", kvm_cpuid_entry2 * 0)]


class kvm_lapic_state(_Struct):
    _fields_ = [("regs", _char * KVM_APIC_REG_SIZE)]


class kvm_xcr(_Struct):
    _fields_ = [("xcr", _u32), ("reserved", _u32), ("value", _u64)]


class kvm_xcrs(_Struct):
    _fields_ = [
        ("nr_xcrs", _u32),
        ("flags", _u32),
        ("xcrs", kvm_xcr * KVM_MAX_XCRS),
        ("padding", _u64 * 16),
    ]


class kvm_xsave(_Struct):
    """The fixed 4 KiB form (KVM_GET_XSAVE); KVM_CAP_XSAVE2 may need more, not used here."""

    _fields_ = [("region", _u32 * 1024)]


class kvm_vcpu_events_exception(_Struct):
    _fields_ = [
        ("injected", _u8),
        ("nr", _u8),
        ("has_error_code", _u8),
        ("pending", _u8),
        ("error_code", _u32),
    ]


class kvm_vcpu_events_interrupt(_Struct):
    _fields_ = [("injected", _u8), ("nr", _u8), ("soft", _u8), ("shadow", _u8)]


class kvm_vcpu_events_nmi(_Struct):
    _fields_ = [("injected", _u8), ("pending", _u8), ("masked", _u8), ("pad", _u8)]


class kvm_vcpu_events_smi(_Struct):
    _fields_ = [("smm", _u8), ("pending", _u8), ("smm_inside_nmi", _u8), ("latched_init", _u8)]


class kvm_vcpu_events_triple_fault(_Struct):
    _fields_ = [("pending", _u8)]


class kvm_vcpu_events(_Struct):
    """The C type's anonymous member structs are named ``kvm_vcpu_events_<member>`` here."""

    _fields_ = [
        ("exception", kvm_vcpu_events_exception),
        ("interrupt", kvm_vcpu_events_interrupt),
        ("nmi", kvm_vcpu_events_nmi),
        ("sipi_vector", _u32),
        ("flags", _u32),
        ("smi", kvm_vcpu_events_smi),
        ("triple_fault", kvm_vcpu_events_triple_fault),
        ("reserved", _u8 * 26),
        ("exception_has_payload", _u8),
        ("exception_payload", _u64),
    ]


class kvm_debugregs(_Struct):
    _fields_ = [
        ("db", _u64 * 4),
        ("dr6", _u64),
        ("dr7", _u64),
        ("flags", _u64),
        ("reserved", _u64 * 9),
    ]


class kvm_mp_state(_Struct):
    _fields_ = [("mp_state", _u32)]
