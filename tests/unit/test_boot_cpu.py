"""Boot CPU state: page tables, GDT encodings, sregs/regs for both entry modes, FPU, MSRs, LAPIC."""

from __future__ import annotations

import ctypes
import struct

import pytest

from firelet.arch.x86_64 import layout, regs
from firelet.arch.x86_64.ram import guest_ram
from firelet.kvm.structs import kvm_lapic_state, kvm_sregs
from firelet.memory.guest import GuestMemory


@pytest.fixture
def mem() -> GuestMemory:
    memory = guest_ram(16 * layout.MiB)
    yield memory
    memory.close()


def _table(mem: GuestMemory, addr: int) -> tuple[int, ...]:
    return struct.unpack("<512Q", mem.read(addr, 4096))


def test_identity_page_tables_map_the_first_gib_with_2mib_pages(mem: GuestMemory) -> None:
    mem.write(layout.PML4_START, b"\xff" * 3 * 4096)  # stale entries must not survive
    assert regs.setup_page_tables(mem) == layout.PML4_START
    pml4, pdpt, pd = (_table(mem, a) for a in (layout.PML4_START, layout.PDPTE_START, layout.PDE_START))
    assert pml4[0] == layout.PDPTE_START | 0x3 and not any(pml4[1:])
    assert pdpt[0] == layout.PDE_START | 0x3 and not any(pdpt[1:])
    assert [e & ~0xFFF for e in pd] == [i << 21 for i in range(512)]
    assert {e & 0xFFF for e in pd} == {0x83}  # present, writable, 2 MiB page


def test_gdt_entries_encode_the_expected_descriptors(mem: GuestMemory) -> None:
    mem.write(layout.BOOT_IDT_START, b"\xff" * 8)
    segments = regs.write_gdt(mem)
    raw = struct.unpack("<4Q", mem.read(layout.BOOT_GDT_START, 32))
    assert raw == (0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF, 0x008F8B000000FFFF)
    assert mem.read_u64(layout.BOOT_IDT_START) == 0
    null, code, data, tss = segments
    assert null.unusable == 1 and null.present == 0
    assert (code.selector, code.type, code.l, code.db, code.s, code.g, code.limit) == (8, 0xB, 1, 0, 1, 1, 0xFFFFFFFF)
    assert (data.selector, data.type, data.l, data.db, data.s, data.present) == (0x10, 0x3, 0, 1, 1, 1)
    assert (tss.selector, tss.type, tss.s, tss.present) == (0x18, 0xB, 0, 1)


def test_descriptor_round_trip_matches_sdm_figure() -> None:
    d = regs.Descriptor(0xC093, 0x12345678, 0xABCDE)
    raw = d.encode()
    assert raw & 0xFFFF == 0xBCDE  # limit 15:0
    assert (raw >> 16) & 0xFFFFFF == 0x345678  # base 23:0
    assert (raw >> 40) & 0xFF == 0x93  # access byte
    assert (raw >> 48) & 0xF == 0xA  # limit 19:16
    assert (raw >> 52) & 0xF == 0xC  # G, D/B
    assert raw >> 56 == 0x12  # base 31:24


def test_long_mode_sregs(mem: GuestMemory) -> None:
    sregs = kvm_sregs()
    sregs.apic_base = 0xFEE00900
    regs.boot_sregs(sregs, mem, mode="long")
    assert sregs.cr0 & regs.X86_CR0_PE and sregs.cr0 & regs.X86_CR0_PG
    assert sregs.cr4 & regs.X86_CR4_PAE
    assert sregs.efer == regs.EFER_LME | regs.EFER_LMA
    assert sregs.cr3 == layout.PML4_START
    assert (sregs.gdt.base, sregs.gdt.limit, sregs.idt.base, sregs.idt.limit) == (0x500, 31, 0x520, 7)
    assert sregs.cs.l == 1 and sregs.cs.selector == 8
    assert all(getattr(sregs, s).selector == 0x10 for s in ("ds", "es", "fs", "gs", "ss"))
    assert sregs.tr.selector == 0x18
    assert sregs.apic_base == 0xFEE00900  # KVM's own values are kept
    assert _table(mem, layout.PDE_START)[1] == (2 << 20) | 0x83


def test_long_mode_sregs_with_given_cr3_does_not_rewrite_tables(mem: GuestMemory) -> None:
    sregs = kvm_sregs()
    regs.boot_sregs(sregs, mem, mode="long", cr3=0x9000)
    assert sregs.cr3 == 0x9000
    assert mem.read(layout.PML4_START, 4096) == bytes(4096)


def test_pvh_sregs_are_flat_32_bit_protected_mode(mem: GuestMemory) -> None:
    sregs = kvm_sregs()
    sregs.cr4, sregs.efer = 0xFFFF, 0xFFFF
    regs.boot_sregs(sregs, mem, mode="pvh")
    assert sregs.cr0 & regs.X86_CR0_PE and not sregs.cr0 & regs.X86_CR0_PG
    assert sregs.cr4 == 0 and sregs.efer == 0
    assert (sregs.cs.db, sregs.cs.l, sregs.cs.base, sregs.cs.limit, sregs.cs.type) == (1, 0, 0, 0xFFFFFFFF, 0xB)
    assert (sregs.ds.db, sregs.ds.limit, sregs.ss.type) == (1, 0xFFFFFFFF, 0x3)
    assert (sregs.tr.base, sregs.tr.limit, sregs.tr.type, sregs.tr.present) == (0, 0x67, 0xB, 1)
    raw = struct.unpack("<4Q", mem.read(layout.BOOT_GDT_START, 32))
    assert raw[1] == 0x00CF9B000000FFFF


def test_boot_regs_for_both_modes() -> None:
    long = regs.boot_regs(0x1000000, mode="long")
    assert (long.rip, long.rsp, long.rbp, long.rsi, long.rflags) == (
        0x1000000, layout.BOOT_STACK_POINTER, layout.BOOT_STACK_POINTER, layout.ZERO_PAGE_START, 2,
    )  # fmt: skip
    pvh = regs.boot_regs(0x1000100, mode="pvh")
    assert (pvh.rip, pvh.rbx, pvh.rflags, pvh.rsi) == (0x1000100, layout.PVH_INFO_START, 2, 0)
    with pytest.raises(ValueError):
        regs.boot_regs(0, mode="real")  # type: ignore[arg-type]


def test_fpu_and_msrs() -> None:
    fpu = regs.boot_fpu()
    assert (fpu.fcw, fpu.mxcsr) == (0x37F, 0x1F80)
    msrs = dict(regs.boot_msrs())
    assert msrs[0x1A0] == 1  # IA32_MISC_ENABLE.FAST_STRING
    for index in (0x174, 0x175, 0x176, 0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084, 0xC0000102, 0x10):
        assert msrs[index] == 0
    assert len(msrs) == 10


def test_lapic_lint_delivery_modes() -> None:
    lapic = kvm_lapic_state()
    raw = bytearray(1024)
    struct.pack_into("<I", raw, 0x350, 0x00010700 | 0x5A)  # masked, mode bits set, some vector bits
    struct.pack_into("<I", raw, 0x360, 0x00010000)
    struct.pack_into("<I", raw, 0x370, 0xDEADBEEF)  # LVT error: untouched
    ctypes.memmove(ctypes.addressof(lapic), bytes(raw), len(raw))
    regs.set_lapic_lint(lapic)
    out = bytes(lapic)
    assert struct.unpack_from("<I", out, 0x350)[0] == 0x00010700 | 0x5A  # ExtINT = 0b111, rest kept
    assert struct.unpack_from("<I", out, 0x360)[0] == 0x00010400  # NMI = 0b100
    assert struct.unpack_from("<I", out, 0x370)[0] == 0xDEADBEEF
    struct.pack_into("<I", raw, 0x350, 0)
    ctypes.memmove(ctypes.addressof(lapic), bytes(raw), len(raw))
    regs.set_lapic_lint(lapic)
    assert struct.unpack_from("<I", bytes(lapic), 0x350)[0] == 0x700
