"""ctypes mirrors of the KVM UAPI structures (x86-64) and the exit-reason constants.

Names of structures and fields are exactly those of ``linux/kvm.h`` and
``asm/kvm.h`` (Linux 6.1 UAPI), so the kernel's API documentation
(Documentation/virt/kvm/api.rst) reads directly onto this module. Sizes and
offsets are checked against the C compiler in ``tests/unit/test_kvm_structs.py``.
Structures ending in a flexible array (``kvm_msrs``, ``kvm_cpuid2``,
``kvm_msr_list``, ``kvm_irq_routing``) are made for a given length by the
``make_*`` helpers.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable
from functools import lru_cache

_u8 = ctypes.c_uint8
_u16 = ctypes.c_uint16
_u32 = ctypes.c_uint32
_s32 = ctypes.c_int32
_u64 = ctypes.c_uint64
_s64 = ctypes.c_int64
# C ``char`` arrays are unsigned bytes here: ctypes turns a c_char array field into
# ``bytes`` cut at the first NUL, which would lose LAPIC and irqchip register data.
_char = ctypes.c_uint8

# --- linux/kvm.h: exit reasons (kvm_run.exit_reason) ---
KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_HYPERCALL = 3
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_IRQ_WINDOW_OPEN = 7
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_SET_TPR = 11
KVM_EXIT_TPR_ACCESS = 12
KVM_EXIT_NMI = 16
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_WATCHDOG = 21
KVM_EXIT_EPR = 23
KVM_EXIT_SYSTEM_EVENT = 24
KVM_EXIT_IOAPIC_EOI = 26
KVM_EXIT_X86_RDMSR = 29
KVM_EXIT_X86_WRMSR = 30
KVM_EXIT_DIRTY_RING_FULL = 31
KVM_EXIT_AP_RESET_HOLD = 32
KVM_EXIT_X86_BUS_LOCK = 33
KVM_EXIT_NOTIFY = 37

#: Exit reason number -> name, for messages ("guest stopped: KVM_EXIT_SHUTDOWN").
KVM_EXIT_NAMES: dict[int, str] = {v: k for k, v in globals().items() if k.startswith("KVM_EXIT_")}

KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1

KVM_SYSTEM_EVENT_SHUTDOWN = 1
KVM_SYSTEM_EVENT_RESET = 2
KVM_SYSTEM_EVENT_CRASH = 3
KVM_SYSTEM_EVENT_WAKEUP = 4
KVM_SYSTEM_EVENT_SUSPEND = 5
KVM_SYSTEM_EVENT_SEV_TERM = 6

KVM_INTERNAL_ERROR_EMULATION = 1
KVM_INTERNAL_ERROR_SIMUL_EX = 2
KVM_INTERNAL_ERROR_DELIVERY_EV = 3
KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON = 4

# --- linux/kvm.h: flags and states ---
KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1
KVM_PIT_SPEAKER_DUMMY = 1
KVM_IRQFD_FLAG_DEASSIGN = 1 << 0
KVM_IRQFD_FLAG_RESAMPLE = 1 << 1
KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0
KVM_IOEVENTFD_FLAG_PIO = 1 << 1
KVM_IOEVENTFD_FLAG_DEASSIGN = 1 << 2
KVM_CLOCK_TSC_STABLE = 2
KVM_CLOCK_REALTIME = 1 << 2
KVM_CLOCK_HOST_TSC = 1 << 3
KVM_IRQ_ROUTING_IRQCHIP = 1
KVM_IRQ_ROUTING_MSI = 2

KVM_MP_STATE_RUNNABLE = 0
KVM_MP_STATE_UNINITIALIZED = 1
KVM_MP_STATE_INIT_RECEIVED = 2
KVM_MP_STATE_HALTED = 3
KVM_MP_STATE_SIPI_RECEIVED = 4
KVM_MP_STATE_STOPPED = 5
KVM_MP_STATE_CHECK_STOP = 6
KVM_MP_STATE_OPERATING = 7
KVM_MP_STATE_LOAD = 8
KVM_MP_STATE_AP_RESET_HOLD = 9
KVM_MP_STATE_SUSPENDED = 10

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
SYNC_REGS_SIZE_BYTES = 2048


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


# --- linux/kvm.h: VM-level structures ---
class kvm_userspace_memory_region(_Struct):
    _fields_ = [
        ("slot", _u32),
        ("flags", _u32),
        ("guest_phys_addr", _u64),
        ("memory_size", _u64),
        ("userspace_addr", _u64),
    ]


class kvm_irqfd(_Struct):
    _fields_ = [
        ("fd", _u32),
        ("gsi", _u32),
        ("flags", _u32),
        ("resamplefd", _u32),
        ("pad", _u8 * 16),
    ]


class kvm_ioeventfd(_Struct):
    _fields_ = [
        ("datamatch", _u64),
        ("addr", _u64),
        ("len", _u32),
        ("fd", _s32),
        ("flags", _u32),
        ("pad", _u8 * 36),
    ]


class _kvm_irq_level_u(ctypes.Union):
    _fields_ = [("irq", _u32), ("status", _s32)]


class kvm_irq_level(_Struct):
    _anonymous_ = ("_u",)
    _fields_ = [("_u", _kvm_irq_level_u), ("level", _u32)]


class kvm_pit_config(_Struct):
    _fields_ = [("flags", _u32), ("pad", _u32 * 15)]


class kvm_pit_channel_state(_Struct):
    _fields_ = [
        ("count", _u32),
        ("latched_count", _u16),
        ("count_latched", _u8),
        ("status_latched", _u8),
        ("status", _u8),
        ("read_state", _u8),
        ("write_state", _u8),
        ("write_latch", _u8),
        ("rw_mode", _u8),
        ("mode", _u8),
        ("bcd", _u8),
        ("gate", _u8),
        ("count_load_time", _s64),
    ]


class kvm_pit_state2(_Struct):
    _fields_ = [
        ("channels", kvm_pit_channel_state * 3),
        ("flags", _u32),
        ("reserved", _u32 * 9),
    ]


class kvm_pic_state(_Struct):
    _fields_ = [
        (name, _u8)
        for name in (
            "last_irr", "irr", "imr", "isr", "priority_add", "irq_base", "read_reg_select",
            "poll", "special_mask", "init_state", "auto_eoi", "rotate_on_auto_eoi",
            "special_fully_nested_mode", "init4", "elcr", "elcr_mask",
        )
    ]  # fmt: skip


class kvm_ioapic_redirtbl_fields(_Struct):
    _fields_ = [
        ("vector", _u8),
        ("delivery_mode", _u8, 3),
        ("dest_mode", _u8, 1),
        ("delivery_status", _u8, 1),
        ("polarity", _u8, 1),
        ("remote_irr", _u8, 1),
        ("trig_mode", _u8, 1),
        ("mask", _u8, 1),
        ("reserve", _u8, 7),
        ("reserved", _u8 * 4),
        ("dest_id", _u8),
    ]


class kvm_ioapic_redirtbl(ctypes.Union):
    _fields_ = [("bits", _u64), ("fields", kvm_ioapic_redirtbl_fields)]


class kvm_ioapic_state(_Struct):
    _fields_ = [
        ("base_address", _u64),
        ("ioregsel", _u32),
        ("id", _u32),
        ("irr", _u32),
        ("pad", _u32),
        ("redirtbl", kvm_ioapic_redirtbl * KVM_IOAPIC_NUM_PINS),
    ]


class kvm_irqchip_chip(ctypes.Union):
    _fields_ = [("dummy", _char * 512), ("pic", kvm_pic_state), ("ioapic", kvm_ioapic_state)]


class kvm_irqchip(_Struct):
    _fields_ = [("chip_id", _u32), ("pad", _u32), ("chip", kvm_irqchip_chip)]


class kvm_clock_data(_Struct):
    _fields_ = [
        ("clock", _u64),
        ("flags", _u32),
        ("pad0", _u32),
        ("realtime", _u64),
        ("host_tsc", _u64),
        ("pad", _u32 * 4),
    ]


class kvm_dirty_log(_Struct):
    """``dirty_bitmap`` is a host pointer in the C union (``padding2`` is its u64 twin)."""

    _fields_ = [("slot", _u32), ("padding1", _u32), ("dirty_bitmap", _u64)]


class kvm_msi(_Struct):
    _fields_ = [
        ("address_lo", _u32),
        ("address_hi", _u32),
        ("data", _u32),
        ("flags", _u32),
        ("devid", _u32),
        ("pad", _u8 * 12),
    ]


class kvm_enable_cap(_Struct):
    _fields_ = [("cap", _u32), ("flags", _u32), ("args", _u64 * 4), ("pad", _u8 * 64)]


class kvm_irq_routing_irqchip(_Struct):
    _fields_ = [("irqchip", _u32), ("pin", _u32)]


class kvm_irq_routing_msi(_Struct):
    _fields_ = [("address_lo", _u32), ("address_hi", _u32), ("data", _u32), ("devid", _u32)]


class kvm_irq_routing_entry_u(ctypes.Union):
    _fields_ = [
        ("irqchip", kvm_irq_routing_irqchip),
        ("msi", kvm_irq_routing_msi),
        ("pad", _u32 * 8),
    ]


class kvm_irq_routing_entry(_Struct):
    _fields_ = [
        ("gsi", _u32),
        ("type", _u32),
        ("flags", _u32),
        ("pad", _u32),
        ("u", kvm_irq_routing_entry_u),
    ]


class kvm_irq_routing(_Struct):
    """Header only (flexible ``entries``); use :func:`make_kvm_irq_routing`."""

    _fields_ = [("nr", _u32), ("flags", _u32), ("entries", kvm_irq_routing_entry * 0)]


# --- linux/kvm.h: struct kvm_run, the page shared with KVM_RUN ---
class kvm_run_hw(_Struct):
    _fields_ = [("hardware_exit_reason", _u64)]


class kvm_run_fail_entry(_Struct):
    _fields_ = [("hardware_entry_failure_reason", _u64), ("cpu", _u32)]


class kvm_run_ex(_Struct):
    _fields_ = [("exception", _u32), ("error_code", _u32)]


class kvm_run_io(_Struct):
    _fields_ = [
        ("direction", _u8),
        ("size", _u8),
        ("port", _u16),
        ("count", _u32),
        ("data_offset", _u64),  # relative to the start of kvm_run
    ]


class kvm_debug_exit_arch(_Struct):
    _fields_ = [("exception", _u32), ("pad", _u32), ("pc", _u64), ("dr6", _u64), ("dr7", _u64)]


class kvm_run_debug(_Struct):
    _fields_ = [("arch", kvm_debug_exit_arch)]


class kvm_run_mmio(_Struct):
    _fields_ = [("phys_addr", _u64), ("data", _u8 * 8), ("len", _u32), ("is_write", _u8)]


class kvm_run_hypercall(_Struct):
    _fields_ = [
        ("nr", _u64),
        ("args", _u64 * 6),
        ("ret", _u64),
        ("longmode", _u32),
        ("pad", _u32),
    ]


class kvm_run_internal(_Struct):
    _fields_ = [("suberror", _u32), ("ndata", _u32), ("data", _u64 * 16)]


class _kvm_run_system_event_u(ctypes.Union):
    _fields_ = [("flags", _u64), ("data", _u64 * 16)]


class kvm_run_system_event(_Struct):
    _anonymous_ = ("_u",)
    _fields_ = [("type", _u32), ("ndata", _u32), ("_u", _kvm_run_system_event_u)]


class kvm_run_msr(_Struct):
    _fields_ = [
        ("error", _u8),
        ("pad", _u8 * 7),
        ("reason", _u32),
        ("index", _u32),
        ("data", _u64),
    ]


class _kvm_run_exit(ctypes.Union):
    _fields_ = [
        ("hw", kvm_run_hw),
        ("fail_entry", kvm_run_fail_entry),
        ("ex", kvm_run_ex),
        ("io", kvm_run_io),
        ("debug", kvm_run_debug),
        ("mmio", kvm_run_mmio),
        ("hypercall", kvm_run_hypercall),
        ("internal", kvm_run_internal),
        ("system_event", kvm_run_system_event),
        ("msr", kvm_run_msr),
        ("padding", _char * 256),
    ]


class kvm_sync_regs(_Struct):
    _fields_ = [("regs", kvm_regs), ("sregs", kvm_sregs), ("events", kvm_vcpu_events)]


class _kvm_run_s(ctypes.Union):
    _fields_ = [("regs", kvm_sync_regs), ("padding", _char * SYNC_REGS_SIZE_BYTES)]


class kvm_run(_Struct):
    """The per-vCPU page KVM fills on every exit; the exit union members are direct attributes."""

    _anonymous_ = ("_exit",)
    _fields_ = [
        ("request_interrupt_window", _u8),
        ("immediate_exit", _u8),
        ("padding1", _u8 * 6),
        ("exit_reason", _u32),
        ("ready_for_interrupt_injection", _u8),
        ("if_flag", _u8),
        ("flags", _u16),
        ("cr8", _u64),
        ("apic_base", _u64),
        ("_exit", _kvm_run_exit),
        ("kvm_valid_regs", _u64),
        ("kvm_dirty_regs", _u64),
        ("s", _kvm_run_s),
    ]


# --- helpers for the flexible-array structures ---
@lru_cache(maxsize=None)
def _flex_type(header: type[ctypes.Structure], n: int) -> type[ctypes.Structure]:
    """A subclass-like twin of ``header`` whose last (flexible) array holds ``n`` elements."""
    *head, (last_name, last_type) = header._fields_
    fields = [*head, (last_name, last_type._type_ * n)]
    return type(f"{header.__name__}_{n}", (_Struct,), {"_fields_": fields})


def make_kvm_msrs(entries: int | Iterable[tuple[int, int]]) -> ctypes.Structure:
    """A ``kvm_msrs`` with room for N entries, or filled from ``(index, data)`` pairs."""
    pairs = [] if isinstance(entries, int) else list(entries)
    n = entries if isinstance(entries, int) else len(pairs)
    msrs = _flex_type(kvm_msrs, n)()
    msrs.nmsrs = n
    for slot, (index, data) in zip(msrs.entries, pairs):
        slot.index = index
        slot.data = data
    return msrs


def make_kvm_cpuid2(entries: int | Iterable[kvm_cpuid_entry2]) -> ctypes.Structure:
    """A ``kvm_cpuid2`` with room for N entries, or holding copies of the given entries."""
    items = [] if isinstance(entries, int) else list(entries)
    n = entries if isinstance(entries, int) else len(items)
    cpuid = _flex_type(kvm_cpuid2, n)()
    cpuid.nent = n
    for i, entry in enumerate(items):
        cpuid.entries[i] = entry
    return cpuid


def make_kvm_msr_list(n: int) -> ctypes.Structure:
    """A ``kvm_msr_list`` with room for N indices."""
    msr_list = _flex_type(kvm_msr_list, n)()
    msr_list.nmsrs = n
    return msr_list


def make_kvm_irq_routing(entries: Iterable[kvm_irq_routing_entry]) -> ctypes.Structure:
    """A ``kvm_irq_routing`` holding copies of the given entries."""
    items = list(entries)
    routing = _flex_type(kvm_irq_routing, len(items))()
    routing.nr = len(items)
    for i, entry in enumerate(items):
        routing.entries[i] = entry
    return routing
