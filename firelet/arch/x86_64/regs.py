"""The boot vCPU's architectural state: GDT, IDT, identity page tables, registers, FPU, MSRs, LAPIC.

Two entry modes are supported:

* ``"long"`` -- the Linux 64-bit boot protocol (boot.rst, "64-bit BOOT PROTOCOL"):
  paging on with an identity map, 64-bit code segment, ``%rsi`` = zero page;
* ``"pvh"`` -- the PVH entry (xen/include/public/arch-x86/hvm/start_info.h and
  docs/misc/pvh.pandoc): 32-bit flat protected mode, paging off,
  ``%ebx`` = ``hvm_start_info``.
"""

from __future__ import annotations

import ctypes
import struct
from typing import Literal, NamedTuple

from firelet.arch.x86_64 import layout
from firelet.kvm.structs import kvm_fpu, kvm_lapic_state, kvm_regs, kvm_segment, kvm_sregs
from firelet.memory.guest import GuestMemory

Mode = Literal["long", "pvh"]

# SDM vol. 3 §2.5 (control registers) and §2.2.1 (EFER).
X86_CR0_PE = 1 << 0
X86_CR0_ET = 1 << 4
X86_CR0_PG = 1 << 31  # paging enabled
X86_CR4_PAE = 1 << 5
EFER_LME = 1 << 8
EFER_LMA = 1 << 10
#: RFLAGS bit 1 is reserved and always 1 (SDM vol. 1 §3.4.3).
RFLAGS_RESERVED = 0x2

# SDM vol. 3 §4.5 (4-level paging): entry bits.
PTE_PRESENT = 1 << 0
PTE_WRITABLE = 1 << 1
PDE_PAGE_SIZE = 1 << 7  # PS: this PD entry maps a 2 MiB page
PAGE_2M = 2 * layout.MiB
ENTRIES_PER_TABLE = 512

# GDT descriptor flags in the 16 bits "flags" form (SDM vol. 3 §3.4.5): bits 0..7 are the
# access byte (type, S, DPL, P), bits 12..15 are AVL, L, D/B, G.
GDT_CODE64 = 0xA09B  # P, S, type 0xb (execute/read, accessed), L, G
GDT_DATA = 0xC093  # P, S, type 0x3 (read/write, accessed), D/B, G
GDT_CODE32 = 0xC09B  # PVH: P, S, type 0xb, D/B, G
GDT_TSS64 = 0x808B  # P, type 0xb (busy 64-bit TSS), G
GDT_TSS32 = 0x008B  # PVH: P, type 0xb (busy 32-bit TSS), byte granular
PVH_TSS_LIMIT = 0x67  # pvh.pandoc: "TR: must be a 32-bit TSS (active) with base of '0' and limit '0x67'"
FLAT_LIMIT = 0xFFFFF  # 20-bit limit; with G=1 that is 4 GiB
CODE_SELECTOR, DATA_SELECTOR, TSS_SELECTOR = 0x08, 0x10, 0x18

# MSR indices (SDM vol. 4, "Model-Specific Registers").
MSR_IA32_TSC = 0x10
MSR_IA32_SYSENTER_CS = 0x174
MSR_IA32_SYSENTER_ESP = 0x175
MSR_IA32_SYSENTER_EIP = 0x176
MSR_IA32_MISC_ENABLE = 0x1A0
MSR_STAR = 0xC0000081
MSR_LSTAR = 0xC0000082
MSR_CSTAR = 0xC0000083
MSR_SYSCALL_MASK = 0xC0000084
MSR_KERNEL_GS_BASE = 0xC0000102
MISC_ENABLE_FAST_STRING = 1 << 0

# Local APIC (SDM vol. 3 §11.5.1): LVT LINT0/LINT1 registers and their delivery mode field.
APIC_LVT_LINT0 = 0x350
APIC_LVT_LINT1 = 0x360
APIC_DELIVERY_MODE_SHIFT = 8
APIC_DELIVERY_MODE_MASK = 0x7 << APIC_DELIVERY_MODE_SHIFT
APIC_MODE_NMI = 0b100
APIC_MODE_EXTINT = 0b111

# x87 / SSE reset-like values (SDM vol. 1 §8.1.5 FNINIT control word, §10.2.3 MXCSR default).
FPU_CONTROL_WORD = 0x37F
MXCSR_DEFAULT = 0x1F80


class Descriptor(NamedTuple):
    """One GDT entry as flags/base/limit, the form the SDM's descriptor figure is read in."""

    flags: int
    base: int
    limit: int

    def encode(self) -> int:
        """The 8-byte segment descriptor (SDM vol. 3 §3.4.5, Figure 3-8)."""
        return (
            ((self.base & 0xFF000000) << 32)
            | ((self.flags & 0xF0FF) << 40)
            | ((self.limit & 0xF0000) << 32)
            | ((self.base & 0x00FFFFFF) << 16)
            | (self.limit & 0xFFFF)
        )

    def segment(self, selector: int) -> kvm_segment:
        """The ``kvm_segment`` KVM expects for this descriptor loaded with ``selector``."""
        g = (self.flags >> 15) & 1
        seg = kvm_segment()
        seg.base = self.base
        seg.limit = ((self.limit << 12) | 0xFFF) if g else self.limit  # G scales the limit by 4 KiB
        seg.selector = selector
        seg.type = self.flags & 0xF
        seg.s = (self.flags >> 4) & 1
        seg.dpl = (self.flags >> 5) & 3
        seg.present = (self.flags >> 7) & 1
        seg.avl = (self.flags >> 12) & 1
        seg.l = (self.flags >> 13) & 1
        seg.db = (self.flags >> 14) & 1
        seg.g = g
        seg.unusable = 0 if seg.present else 1
        return seg


def gdt_table(mode: Mode = "long") -> list[Descriptor]:
    """The boot GDT: null, code, data, TSS."""
    if mode == "long":
        return [Descriptor(0, 0, 0), Descriptor(GDT_CODE64, 0, FLAT_LIMIT), Descriptor(GDT_DATA, 0, FLAT_LIMIT),
                Descriptor(GDT_TSS64, 0, FLAT_LIMIT)]  # fmt: skip
    if mode == "pvh":
        return [Descriptor(0, 0, 0), Descriptor(GDT_CODE32, 0, FLAT_LIMIT), Descriptor(GDT_DATA, 0, FLAT_LIMIT),
                Descriptor(GDT_TSS32, 0, PVH_TSS_LIMIT)]  # fmt: skip
    raise ValueError(f"unknown boot mode {mode!r}")


def write_gdt(mem: GuestMemory, *, mode: Mode = "long") -> list[kvm_segment]:
    """Write the GDT at BOOT_GDT_START and an empty IDT at BOOT_IDT_START.

    Returns the segments for the null, code, data and TSS selectors. The empty
    IDT makes any early fault a triple fault (a clean shutdown exit), not a jump
    into garbage.
    """
    table = gdt_table(mode)
    mem.write(layout.BOOT_GDT_START, b"".join(struct.pack("<Q", d.encode()) for d in table))
    mem.write_u64(layout.BOOT_IDT_START, 0)
    return [d.segment(i * 8) for i, d in enumerate(table)]


def setup_page_tables(mem: GuestMemory) -> int:
    """Identity-map the first 1 GiB with 2 MiB pages (PML4 -> PDPT -> PD); returns CR3."""
    mem.write(layout.PML4_START, struct.pack("<Q", layout.PDPTE_START | PTE_PRESENT | PTE_WRITABLE) + bytes(4088))
    mem.write(layout.PDPTE_START, struct.pack("<Q", layout.PDE_START | PTE_PRESENT | PTE_WRITABLE) + bytes(4088))
    flags = PTE_PRESENT | PTE_WRITABLE | PDE_PAGE_SIZE
    mem.write(layout.PDE_START, struct.pack(f"<{ENTRIES_PER_TABLE}Q", *((i * PAGE_2M) | flags for i in range(512))))
    return layout.PML4_START


def boot_sregs(sregs: kvm_sregs, mem: GuestMemory, *, mode: Mode = "long", cr3: int | None = None) -> None:
    """Fill ``sregs`` (from KVM_GET_SREGS) for the entry ``mode``; writes the GDT and IDT.

    In long mode the identity page tables are written too, unless ``cr3`` says
    they already were (by :func:`setup_page_tables`). Fields this does not
    name (``apic_base``, ``interrupt_bitmap``, ``cr8``) keep KVM's values.
    """
    _null, code, data, tss = write_gdt(mem, mode=mode)
    sregs.gdt.base = layout.BOOT_GDT_START
    sregs.gdt.limit = 4 * 8 - 1
    sregs.idt.base = layout.BOOT_IDT_START
    sregs.idt.limit = 8 - 1
    sregs.cs = code
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data
    sregs.tr = tss
    if mode == "long":
        sregs.cr3 = setup_page_tables(mem) if cr3 is None else cr3
        sregs.cr4 = X86_CR4_PAE
        sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG
        sregs.efer = EFER_LME | EFER_LMA
    else:  # PVH: 32-bit protected mode, paging and long mode off
        sregs.cr3 = 0
        sregs.cr4 = 0
        sregs.cr0 = X86_CR0_PE | X86_CR0_ET
        sregs.efer = 0


def boot_regs(entry: int, *, mode: Mode = "long", start_info: int = layout.PVH_INFO_START) -> kvm_regs:
    """General registers at the kernel entry point."""
    regs = kvm_regs()
    regs.rip = entry
    regs.rflags = RFLAGS_RESERVED
    if mode == "long":
        # boot.rst "64-bit BOOT PROTOCOL": %rsi holds the zero page's base address.
        regs.rsp = regs.rbp = layout.BOOT_STACK_POINTER
        regs.rsi = layout.ZERO_PAGE_START
    elif mode == "pvh":
        regs.rbx = start_info  # pvh.pandoc: "ebx: contains the physical memory address of the start_info"
    else:
        raise ValueError(f"unknown boot mode {mode!r}")
    return regs


def boot_fpu() -> kvm_fpu:
    """x87 and SSE control state as after FNINIT, with the default MXCSR."""
    fpu = kvm_fpu()
    fpu.fcw = FPU_CONTROL_WORD
    fpu.mxcsr = MXCSR_DEFAULT
    return fpu


def boot_msrs() -> list[tuple[int, int]]:
    """``(index, value)`` for the MSRs set before boot: syscall MSRs cleared, TSC 0, fast strings on."""
    cleared = (
        MSR_IA32_SYSENTER_CS, MSR_IA32_SYSENTER_ESP, MSR_IA32_SYSENTER_EIP,
        MSR_STAR, MSR_CSTAR, MSR_KERNEL_GS_BASE, MSR_SYSCALL_MASK, MSR_LSTAR,
        MSR_IA32_TSC,
    )  # fmt: skip
    return [(index, 0) for index in cleared] + [(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING)]


def set_lapic_lint(lapic: kvm_lapic_state) -> None:
    """LINT0 delivers ExtINT (the PIC, virtual wire mode) and LINT1 delivers NMI, as on a PC."""
    for offset, mode in ((APIC_LVT_LINT0, APIC_MODE_EXTINT), (APIC_LVT_LINT1, APIC_MODE_NMI)):
        reg = ctypes.c_uint32.from_buffer(lapic, type(lapic).regs.offset + offset)
        reg.value = (reg.value & ~APIC_DELIVERY_MODE_MASK) | (mode << APIC_DELIVERY_MODE_SHIFT)

