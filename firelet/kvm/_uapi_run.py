"""ctypes mirror of ``struct kvm_run`` (the page shared with KVM_RUN) and the exit reasons.

Part of :mod:`firelet.kvm.structs`, which re-exports everything here; import from there.
"""

from __future__ import annotations

import ctypes

from firelet.kvm._uapi_cpu import _char, _Struct, _u8, _u16, _u32, _u64, kvm_regs, kvm_sregs, kvm_vcpu_events

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

SYNC_REGS_SIZE_BYTES = 2048


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
