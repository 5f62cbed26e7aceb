"""vCPU and VM state survives a set/get round trip through the real /dev/kvm."""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Iterator

import pytest

from firelet.kvm import Kvm, KvmError, VcpuFd, VmFd
from firelet.kvm import structs as S

MSR_IA32_SYSENTER_CS = 0x174  # Intel SDM vol. 4, table 2-2
MSR_IA32_SYSENTER_ESP = 0x175
XSAVE_XSTATE_BV = 512 // 4  # XSAVE header at byte 512 (Intel SDM vol. 1, 13.4.2), in u32 words
APIC_TASKPRI = 0x80  # LAPIC task priority register offset (Intel SDM vol. 3, 10.4.1)


@pytest.fixture
def vm_and_vcpu() -> Iterator[tuple[Kvm, VmFd, VcpuFd]]:
    with Kvm() as kvm, kvm.create_vm() as vm:
        vm.create_irqchip()  # LAPIC state and MP state need the in-kernel irqchip
        with vm.create_vcpu(0) as vcpu:
            yield kvm, vm, vcpu


def _raw(obj: ctypes.Structure) -> bytes:
    return bytes(memoryview(obj).cast("B"))


def test_kvm_regs_round_trip(vm_and_vcpu: tuple[Kvm, VmFd, VcpuFd]) -> None:
    vcpu = vm_and_vcpu[2]
    regs = vcpu.get_regs()
    assert regs.rip == 0xFFF0 and regs.rflags == 0x2  # the x86 reset state
    regs.rax, regs.r15, regs.rsp, regs.rip = 0x1122334455667788, 0xFEDC, 0x8000, 0x1000
    vcpu.set_regs(regs)
    assert _raw(vcpu.get_regs()) == _raw(regs)


def test_kvm_sregs_round_trip(vm_and_vcpu: tuple[Kvm, VmFd, VcpuFd]) -> None:
    vcpu = vm_and_vcpu[2]
    sregs = vcpu.get_sregs()
    assert sregs.cs.selector == 0xF000 and sregs.cs.base == 0xFFFF0000  # reset state
    sregs.cs.base, sregs.cs.selector = 0, 0
    sregs.gdt.base, sregs.gdt.limit = 0x500, 0x1F
    sregs.cr2 = 0xDEAD000
    vcpu.set_sregs(sregs)
    got = vcpu.get_sregs()
    assert (got.cs.base, got.cs.selector, got.gdt.base, got.gdt.limit, got.cr2) == (0, 0, 0x500, 0x1F, 0xDEAD000)


def test_kvm_fpu_round_trip(vm_and_vcpu: tuple[Kvm, VmFd, VcpuFd]) -> None:
    vcpu = vm_and_vcpu[2]
    fpu = vcpu.get_fpu()
    fpu.fcw = 0x27F
    fpu.fsw = 0x100
    fpu.fpr[7][0:10] = [1] * 10
    fpu.xmm[3][0:16] = list(range(16))
    vcpu.set_fpu(fpu)
    got = vcpu.get_fpu()
    # mxcsr is not compared: the kernel's KVM_GET_FPU never fills it in (KVM_SET_FPU does set it).
    assert (got.fcw, got.fsw, list(got.fpr[7])[:10], list(got.xmm[3])) == (0x27F, 0x100, [1] * 10, list(range(16)))


def test_kvm_msrs_round_trip(vm_and_vcpu: tuple[Kvm, VmFd, VcpuFd]) -> None:
    vcpu = vm_and_vcpu[2]
    wanted = [(MSR_IA32_SYSENTER_CS, 0x10), (MSR_IA32_SYSENTER_ESP, 0xFFFF800000001000)]
    vcpu.set_msrs(wanted)
    assert vcpu.get_msrs([index for index, _ in wanted]) == wanted


def test_kvm_msrs_refused_index_is_an_error_naming_it(vm_and_vcpu: tuple[Kvm, VmFd, VcpuFd]) -> None:
    vcpu = vm_and_vcpu[2]
    with pytest.raises(KvmError, match="0xdeadbeef"):
        vcpu.set_msrs([(0xDEADBEEF, 1)])
    with pytest.raises(KvmError, match="0xdeadbeef"):
        vcpu.get_msrs([MSR_IA32_SYSENTER_CS, 0xDEADBEEF])


def test_kvm_lapic_round_trip(vm_and_vcpu: tuple[Kvm, VmFd, VcpuFd]) -> None:
    vcpu = vm_and_vcpu[2]
    lapic = vcpu.get_lapic()
    assert any(lapic.regs), "LAPIC state reads as all zeroes"
    struct.pack_into("<I", lapic.regs, APIC_TASKPRI, 0x20)
    vcpu.set_lapic(lapic)
    assert struct.unpack_from("<I", vcpu.get_lapic().regs, APIC_TASKPRI)[0] == 0x20


def test_kvm_mp_state_round_trip(vm_and_vcpu: tuple[Kvm, VmFd, VcpuFd]) -> None:
    vcpu = vm_and_vcpu[2]
    assert vcpu.get_mp_state() == S.KVM_MP_STATE_RUNNABLE  # vCPU 0 is the boot CPU
    vcpu.set_mp_state(S.KVM_MP_STATE_HALTED)
    assert vcpu.get_mp_state() == S.KVM_MP_STATE_HALTED


def test_kvm_vcpu_events_round_trip(vm_and_vcpu: tuple[Kvm, VmFd, VcpuFd]) -> None:
    vcpu = vm_and_vcpu[2]
    events = vcpu.get_vcpu_events()
    events.flags = S.KVM_VCPUEVENT_VALID_NMI_PENDING | S.KVM_VCPUEVENT_VALID_SHADOW
    events.nmi.pending = 1
    events.nmi.masked = 1
    events.interrupt.shadow = 0
    vcpu.set_vcpu_events(events)
    got = vcpu.get_vcpu_events()
    assert (got.nmi.pending, got.nmi.masked) == (1, 1)


def test_kvm_xcrs_and_xsave_round_trip(vm_and_vcpu: tuple[Kvm, VmFd, VcpuFd]) -> None:
    vcpu = vm_and_vcpu[2]
    xcrs = vcpu.get_xcrs()
    assert xcrs.nr_xcrs >= 1 and xcrs.xcrs[0].xcr == 0 and xcrs.xcrs[0].value & 1  # XCR0.x87 is always set
    vcpu.set_xcrs(xcrs)
    assert _raw(vcpu.get_xcrs()) == _raw(xcrs)
    xsave = vcpu.get_xsave()
    xsave.region[0] = 0x27F  # legacy area: FCW (Intel SDM vol. 1, 13.4.1)
    xsave.region[XSAVE_XSTATE_BV] |= 1  # x87 state present, else KVM loads the x87 init state
    vcpu.set_xsave(xsave)
    assert vcpu.get_xsave().region[0] & 0xFFFF == 0x27F
    assert vcpu.get_fpu().fcw == 0x27F


def test_kvm_cpuid2_round_trip(vm_and_vcpu: tuple[Kvm, VmFd, VcpuFd]) -> None:
    kvm, _, vcpu = vm_and_vcpu
    supported = kvm.supported_cpuid()
    leaves = {e.function for e in supported.entries}
    assert 0 in leaves and 1 in leaves and 0x80000000 in leaves
    vcpu.set_cpuid2(supported)
    got = vcpu.get_cpuid2()
    # What KVM guarantees: it keeps the leaves that carry information (their values may differ
    # where KVM fills in runtime bits: leaf 1's APIC id and OSXSAVE, leaf 0xD's sizes). It may
    # drop empty ones: an Intel host's PVM dropped the all-zero AMX tile leaves 0x1D and 0x1E
    # (56 entries set, 54 read back), an AMD host's kept them all.
    set_leaves = {(e.function, e.index): e for e in supported.entries}
    got_leaves = {(e.function, e.index): e for e in got.entries}
    assert got.nent == len(got_leaves) <= supported.nent
    assert set(got_leaves) <= set(set_leaves)
    dropped = [set_leaves[key] for key in set(set_leaves) - set(got_leaves)]
    assert all(_regs(e) == (0, 0, 0, 0) for e in dropped), dropped
    assert _regs(got_leaves[(0, 0)]) == _regs(set_leaves[(0, 0)])  # the vendor and the highest leaf


def _regs(entry: object) -> tuple[int, int, int, int]:
    return (entry.eax, entry.ebx, entry.ecx, entry.edx)  # type: ignore[attr-defined]


def test_kvm_supported_cpuid_grows_its_buffer_on_e2big() -> None:
    with Kvm() as kvm:
        full = kvm.supported_cpuid()
        small = kvm.supported_cpuid(max_entries=2)
    assert small.nent == full.nent > 2


def test_kvm_pit2_irqchip_and_clock_round_trip() -> None:
    with Kvm() as kvm, kvm.create_vm() as vm:
        vm.create_irqchip()
        vm.create_pit2()
        pit = vm.get_pit2()
        pit.channels[2].gate = 1
        vm.set_pit2(pit)
        assert vm.get_pit2().channels[2].gate == 1

        ioapic = vm.get_irqchip(S.KVM_IRQCHIP_IOAPIC)
        assert ioapic.chip.ioapic.base_address == 0xFEC00000  # the IOAPIC's default address
        ioapic.chip.ioapic.redirtbl[3].fields.vector = 0x33
        vm.set_irqchip(ioapic)
        assert vm.get_irqchip(S.KVM_IRQCHIP_IOAPIC).chip.ioapic.redirtbl[3].fields.vector == 0x33
        pic = vm.get_irqchip(S.KVM_IRQCHIP_PIC_MASTER)
        pic.chip.pic.imr = 0xFB
        vm.set_irqchip(pic)
        assert vm.get_irqchip(S.KVM_IRQCHIP_PIC_MASTER).chip.pic.imr == 0xFB

        clock = vm.get_clock()
        clock.clock = 5_000_000_000
        clock.flags = 0
        vm.set_clock(clock)
        assert 5_000_000_000 <= vm.get_clock().clock < 6_000_000_000
