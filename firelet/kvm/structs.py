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
from functools import cache
from typing import Any

# The vCPU state structures and kvm_run live in two private modules, to keep
# each file short; this module re-exports them and is the one to import.
from firelet.kvm._uapi_cpu import *  # noqa: F403 - re-exported: this module is the one to import
from firelet.kvm._uapi_cpu import (
    KVM_IOAPIC_NUM_PINS,
    _char,
    _s32,
    _s64,
    _Struct,
    _u8,
    _u16,
    _u32,
    _u64,
    kvm_cpuid2,
    kvm_cpuid_entry2,
    kvm_msr_list,
    kvm_msrs,
)
from firelet.kvm._uapi_run import *  # noqa: F403 - re-exported: this module is the one to import

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


class kvm_coalesced_mmio_zone(_Struct):
    """KVM_(UN)REGISTER_COALESCED_MMIO: a guest-physical (or, with ``pio``, port) range."""

    _fields_ = [
        ("addr", _u64),
        ("size", _u32),
        ("pio", _u32),  # union { __u32 pad; __u32 pio; }
    ]


class kvm_coalesced_mmio(_Struct):
    """One queued write in the coalesced ring (``struct kvm_coalesced_mmio``)."""

    _fields_ = [
        ("phys_addr", _u64),
        ("len", _u32),
        ("pio", _u32),
        ("data", _u8 * 8),
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


# --- helpers for the flexible-array structures ---
@cache
def _flex_type(header: type[ctypes.Structure], n: int) -> type[ctypes.Structure]:
    """A subclass-like twin of ``header`` whose last (flexible) array holds ``n`` elements."""
    *head, last = header._fields_
    flexible: Any = last[1]  # a zero-length ctypes array type; _type_ is its element type
    fields = [*head, (last[0], flexible._type_ * n)]
    return type(f"{header.__name__}_{n}", (_Struct,), {"_fields_": fields})


def make_kvm_msrs(entries: int | Iterable[tuple[int, int]]) -> ctypes.Structure:
    """A ``kvm_msrs`` with room for N entries, or filled from ``(index, data)`` pairs."""
    pairs = [] if isinstance(entries, int) else list(entries)
    n = entries if isinstance(entries, int) else len(pairs)
    msrs = _flex_type(kvm_msrs, n)()
    msrs.nmsrs = n
    for slot, (index, data) in zip(msrs.entries, pairs, strict=False):  # no pairs when only room is asked for
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
