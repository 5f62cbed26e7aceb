"""Per-vCPU CPUID edits on a synthetic KVM_GET_SUPPORTED_CPUID answer."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from firelet.arch.x86_64.cpuid import build_cpuid
from firelet.kvm.structs import kvm_cpuid_entry2, make_kvm_cpuid2

SIGNIFICANT_INDEX = 1


def _entry(function: int, index: int, eax: int, ebx: int, ecx: int, edx: int, flags: int = 0) -> kvm_cpuid_entry2:
    e = kvm_cpuid_entry2()
    e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx = function, index, flags, eax, ebx, ecx, edx
    return e


def _vendor_regs(vendor: bytes) -> tuple[int, int, int]:
    ebx, edx, ecx = (int.from_bytes(vendor[i : i + 4], "little") for i in (0, 4, 8))
    return ebx, ecx, edx


def _supported(vendor: bytes = b"GenuineIntel"):
    ebx, ecx, edx = _vendor_regs(vendor)
    kvm_sig = [int.from_bytes(b"KVMKVMKVM\x00\x00\x00"[i : i + 4], "little") for i in (0, 4, 8)]
    entries = [
        _entry(0x0, 0, 0x1F, ebx, ecx, edx),
        _entry(0x1, 0, 0x000806EC, 0x00000800, 0x7FFAFBBF, 0xBFEBFBFF & ~(1 << 28)),
        # leaf 4 subleaves: L1d, L1i, L2, L3, terminator (type 0)
        _entry(0x4, 0, 0x1C004121, 0x01C0003F, 0x3F, 0, SIGNIFICANT_INDEX),
        _entry(0x4, 1, 0x1C004122, 0x01C0003F, 0x3F, 0, SIGNIFICANT_INDEX),
        _entry(0x4, 2, 0x1C004143, 0x00C0003F, 0x3FF, 0, SIGNIFICANT_INDEX),
        _entry(0x4, 3, 0x1C03C163, 0x03C0003F, 0x1FFF, 6, SIGNIFICANT_INDEX),
        _entry(0x4, 4, 0, 0, 0, 0, SIGNIFICANT_INDEX),
        _entry(0x6, 0, 0x77, 0x2, 0x9, 0),
        _entry(0xB, 0, 1, 2, 0x100, 7, SIGNIFICANT_INDEX),
        _entry(0xB, 1, 4, 8, 0x201, 7, SIGNIFICANT_INDEX),
        _entry(0xB, 2, 0, 0, 2, 7, SIGNIFICANT_INDEX),
        _entry(0x1F, 0, 1, 2, 0x100, 7, SIGNIFICANT_INDEX),
        _entry(0x1F, 1, 4, 8, 0x201, 7, SIGNIFICANT_INDEX),
        _entry(0x40000000, 0, 0x40000001, *kvm_sig),
        _entry(0x40000001, 0, 0x01007AFB, 0, 0, 0),
        _entry(0x80000000, 0, 0x8000001F, 0, 0, 0),
        _entry(0x80000001, 0, 0, 0, 0x121, 0x2C100800),
        _entry(0x80000008, 0, 0x3030, 0, 0x7007, 0),
        _entry(0x8000001E, 0, 0x55, 0x0105, 0x0300, 0x9),
    ]
    return make_kvm_cpuid2(entries)


def _leaf(cpuid, function: int, index: int = 0) -> kvm_cpuid_entry2:
    (found,) = [e for e in cpuid.entries if e.function == function and e.index == index]
    return found


def test_leaf1_apic_id_count_hypervisor_and_htt() -> None:
    supported = _supported()
    out = build_cpuid(supported, 3, 4)
    leaf1 = _leaf(out, 1)
    assert leaf1.ebx >> 24 == 3  # initial APIC ID
    assert (leaf1.ebx >> 16) & 0xFF == 4  # logical processors
    assert leaf1.ebx & 0xFFFF == 0x0800  # CLFLUSH size kept
    assert leaf1.ecx & (1 << 31)  # hypervisor present
    assert leaf1.edx & (1 << 28)  # HTT
    assert leaf1.eax == 0x000806EC
    single = _leaf(build_cpuid(supported, 0, 1), 1)
    assert not single.edx & (1 << 28) and single.ebx >> 16 == 0x01


def test_input_is_not_modified_and_entries_are_all_kept() -> None:
    supported = _supported()
    before = bytes(supported)
    out = build_cpuid(supported, 1, 2)
    assert bytes(supported) == before
    kept = [(e.function, e.index) for e in supported.entries]
    assert [(e.function, e.index) for e in out.entries] == [*kept, (0x1F, 2)]  # 0x1F lacked its terminator


def test_missing_topology_subleaves_are_added() -> None:
    """Some KVMs (this machine's) report only subleaf 0 of leaf 0xB; the core level must still exist."""
    entries = [e for e in _supported().entries if e.function not in (0xB, 0x1F)]
    entries.append(_entry(0xB, 0, 0, 0, 0, 0, SIGNIFICANT_INDEX))
    out = build_cpuid(make_kvm_cpuid2(entries), 1, 2)
    subleaves = {e.index: e for e in out.entries if e.function == 0xB}
    assert sorted(subleaves) == [0, 1, 2]
    assert all(e.flags & SIGNIFICANT_INDEX for e in subleaves.values())
    assert ((subleaves[1].ecx >> 8) & 0xFF, subleaves[1].ebx, subleaves[1].edx) == (2, 2, 1)
    assert (subleaves[2].ecx >> 8) & 0xFF == 0
    assert not [e for e in out.entries if e.function == 0x1F]  # not invented where KVM has none


def test_leaf4_cores_per_package_and_cache_sharing_on_intel() -> None:
    out = build_cpuid(_supported(), 0, 4)
    for index, level in ((0, 1), (1, 1), (2, 2), (3, 3)):
        eax = _leaf(out, 4, index).eax
        assert eax >> 26 == 3  # cores per package - 1
        assert (eax >> 14) & 0xFFF == (3 if level == 3 else 0)  # sharing: L3 package-wide
        assert eax & 0x3FFF == _leaf(_supported(), 4, index).eax & 0x3FFF  # type/level kept
    assert _leaf(out, 4, 4).eax == 0  # terminator untouched


def test_leaf6_is_cleared_and_kvm_leaves_are_as_given() -> None:
    supported = _supported()
    out = build_cpuid(supported, 0, 2)
    leaf6 = _leaf(out, 6)
    assert (leaf6.eax, leaf6.ebx, leaf6.ecx, leaf6.edx) == (0, 0, 0, 0)
    for function in (0x40000000, 0x40000001):
        assert bytes(_leaf(out, function)) == bytes(_leaf(supported, function))
    sig = _leaf(out, 0x40000000)
    assert b"".join(v.to_bytes(4, "little") for v in (sig.ebx, sig.ecx, sig.edx)).startswith(b"KVMKVMKVM")


def test_extended_topology_levels_per_subleaf() -> None:
    out = build_cpuid(_supported(), 5, 6)
    for leaf in (0xB, 0x1F):
        smt, core = _leaf(out, leaf, 0), _leaf(out, leaf, 1)
        assert (smt.eax, smt.ebx & 0xFFFF, smt.ecx) == (0, 1, 0x100)  # SMT level: 1 thread
        assert (core.eax & 0x1F, core.ebx & 0xFFFF, core.ecx) == (3, 6, 0x201)  # core level: 6 cores, 3 bits
        assert smt.edx == core.edx == 5  # x2APIC ID
    invalid = _leaf(out, 0xB, 2)
    assert (invalid.eax, invalid.ebx, (invalid.ecx >> 8) & 0xFF, invalid.ecx & 0xFF, invalid.edx) == (0, 0, 0, 2, 5)


def test_amd_topology_leaves() -> None:
    supported = _supported(b"AuthenticAMD")
    out = build_cpuid(supported, 2, 3)
    assert _leaf(out, 0x80000001).ecx & 0x2  # CmpLegacy
    ecx = _leaf(out, 0x80000008).ecx
    assert ecx & 0xFF == 2 and (ecx >> 12) & 0xF == 2  # NC = 3 cores - 1; ApicIdSize = 2 bits
    assert ecx & 0xFFFF0F00 == 0x7007 & 0xFFFF0F00  # other bits kept
    assert _leaf(out, 0x80000008).eax == 0x3030  # address sizes kept
    ext = _leaf(out, 0x8000001E)
    assert (ext.eax, ext.ebx & 0xFF, (ext.ebx >> 8) & 0xFF, ext.ecx & 0x7FF) == (2, 2, 0, 0)
    assert bytes(_leaf(out, 4, 0)) == bytes(_leaf(supported, 4, 0))  # leaf 4 is Intel-only
    intel = build_cpuid(_supported(), 2, 3)
    assert bytes(_leaf(intel, 0x8000001E)) == bytes(_leaf(_supported(), 0x8000001E))  # AMD-only edits
    assert not _leaf(intel, 0x80000001).ecx & 0x2


@given(st.integers(1, 32).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1))))
def test_every_vcpu_sees_its_own_apic_id_and_a_wide_enough_core_field(case: tuple[int, int]) -> None:
    num_cpus, index = case
    out = build_cpuid(_supported(), index, num_cpus)
    assert _leaf(out, 1).ebx >> 24 == index
    core = _leaf(out, 0xB, 1)
    assert core.edx == index
    assert 1 << (core.eax & 0x1F) >= num_cpus  # all APIC IDs fit below the package shift
    assert index >> (core.eax & 0x1F) == 0  # ... and all CPUs are in package 0


def test_tsc_deadline_timer_is_advertised_only_when_kvm_has_it() -> None:
    from firelet.arch.x86_64.cpuid import LEAF1_ECX_TSC_DEADLINE, build_cpuid
    from firelet.kvm.structs import kvm_cpuid_entry2, make_kvm_cpuid2

    supported = make_kvm_cpuid2([kvm_cpuid_entry2(function=0, eax=1), kvm_cpuid_entry2(function=1)])

    def leaf1_ecx(cpuid) -> int:
        return next(e.ecx for e in cpuid.entries[: cpuid.nent] if e.function == 1)

    assert leaf1_ecx(build_cpuid(supported, 0, 1, tsc_deadline=True)) & LEAF1_ECX_TSC_DEADLINE
    assert not leaf1_ecx(build_cpuid(supported, 0, 1)) & LEAF1_ECX_TSC_DEADLINE
