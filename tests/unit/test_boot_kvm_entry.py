"""The boot state on the real /dev/kvm: a tiny "kernel" entered exactly as Linux would be.

Each guest is an ELF loaded by the loader, with the zero page, MP table, CPUID,
MSRs, FPU, LAPIC and sregs/regs set by the boot code; its few instructions
report over port I/O what they see (the zero page through %rsi, memory near
the top of the identity map, the stack; or start_info through %ebx in PVH).
This machine's /dev/kvm emulates such code slowly, so the guests are short.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from firelet.arch.x86_64 import bootparams, cpuid, layout, loader, mptable, pvh, regs
from firelet.arch.x86_64.ram import guest_ram
from firelet.devtools.images.tiny import ENTRY, elf
from firelet.kvm import Kvm
from firelet.kvm import structs as S
from firelet.memory.guest import GuestMemory

PORT = 0x3F8
MARK_ADDR = 0x3FFFF000  # last page of the 1 GiB identity map
MARK = 0x5EED1234

LONG_CODE = bytes.fromhex(
    "66baf803"  # mov dx, 0x3f8
    "8b8602020000"  # mov eax, [rsi+0x202]      ; "HdrS" from the zero page
    "ef"  # out dx, eax
    "8b042500f0ff3f"  # mov eax, [0x3FFFF000]  ; through the 2 MiB identity map
    "50"  # push rax                            ; the boot stack works
    "5b"  # pop rbx
    "89d8"  # mov eax, ebx
    "ef"  # out dx, eax
    "f4"  # hlt
)
PVH_CODE = bytes.fromhex(
    "66baf803"  # mov dx, 0x3f8
    "8b03"  # mov eax, [ebx]                    ; start_info magic
    "ef"  # out dx, eax
    "8b4318"  # mov eax, [ebx+24]               ; cmdline_paddr (low half)
    "ef"  # out dx, eax
    "f4"  # hlt
)


@pytest.fixture
def kvm() -> Iterator[Kvm]:
    with Kvm() as k:
        yield k


@pytest.fixture
def mem() -> Iterator[GuestMemory]:
    memory = guest_ram(layout.GiB)
    yield memory
    memory.close()


def _boot_vcpu(kvm: Kvm, mem: GuestMemory, kernel: loader.KernelImage, mode: regs.Mode):
    vm = kvm.create_vm()
    for slot, region in enumerate(mem.regions):
        vm.set_user_memory_region(slot, region.guest_addr, region.size, region.host_addr)
    vm.set_tss_addr(layout.KVM_TSS_START)
    vm.create_irqchip()
    vcpu = vm.create_vcpu(0)
    vcpu.set_cpuid2(cpuid.build_cpuid(kvm.supported_cpuid(), 0, 1))
    vcpu.set_msrs(regs.boot_msrs())
    vcpu.set_fpu(regs.boot_fpu())
    lapic = vcpu.get_lapic()
    regs.set_lapic_lint(lapic)
    vcpu.set_lapic(lapic)
    sregs = vcpu.get_sregs()
    regs.boot_sregs(sregs, mem, mode=mode)
    vcpu.set_sregs(sregs)
    entry = kernel.entry if mode == "long" else kernel.pvh_entry
    vcpu.set_regs(regs.boot_regs(entry, mode=mode))
    return vm, vcpu


def _outs(vcpu, count: int) -> list[int]:
    values = []
    for _ in range(count):
        assert vcpu.run()
        assert vcpu.exit_reason == S.KVM_EXIT_IO, S.KVM_EXIT_NAMES.get(vcpu.exit_reason)
        assert vcpu.run_struct.io.port == PORT
        values.append(int.from_bytes(bytes(vcpu.io_data()), "little"))
    return values  # the guest then halts; with an in-kernel LAPIC, HLT does not exit to us


def test_long_mode_entry_sees_zero_page_identity_map_and_stack(kvm: Kvm, mem: GuestMemory) -> None:
    kernel = loader.load_kernel_data(mem, elf(LONG_CODE))
    loader.write_cmdline(mem, "console=ttyS0", kernel=kernel)
    bootparams.write_boot_params(mem, kernel, 14)
    mptable.write_mptable(mem, 1)
    mem.write_u32(MARK_ADDR, MARK)
    vm, vcpu = _boot_vcpu(kvm, mem, kernel, "long")
    try:
        assert _outs(vcpu, 2) == [int.from_bytes(b"HdrS", "little"), MARK]
        state = vcpu.get_regs()
        assert state.rsi == layout.ZERO_PAGE_START and state.rsp == layout.BOOT_STACK_POINTER
        sregs = vcpu.get_sregs()
        assert sregs.efer & regs.EFER_LMA and sregs.cs.l == 1
    finally:
        vcpu.close()
        vm.close()


def test_pvh_entry_sees_start_info_in_ebx(kvm: Kvm, mem: GuestMemory) -> None:
    kernel = loader.load_kernel_data(mem, elf(b"\xf4" + PVH_CODE, pvh_offset=1))
    assert kernel.pvh_entry == ENTRY + 1
    pvh.write_pvh_start_info(mem, "console=ttyS0", kernel=kernel)
    vm, vcpu = _boot_vcpu(kvm, mem, kernel, "pvh")
    try:
        assert _outs(vcpu, 2) == [0x336EC578, layout.CMDLINE_START]
        assert vcpu.get_sregs().cr0 & regs.X86_CR0_PG == 0
    finally:
        vcpu.close()
        vm.close()
