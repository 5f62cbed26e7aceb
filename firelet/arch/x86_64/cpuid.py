"""Per-vCPU CPUID: KVM's supported CPUID with the topology made to describe this VM.

Each vCPU gets its own copy, differing in the APIC IDs it reports. The
topology is one package of ``num_cpus`` cores with one thread each, APIC IDs
0..num_cpus-1, matching the MP table. References: Intel SDM vol. 2A, CPUID
instruction ("SDM"), AMD APM vol. 3, appendix E ("APM").
"""

from __future__ import annotations

import ctypes

from firelet.kvm.structs import KVM_CPUID_FLAG_SIGNIFCANT_INDEX, kvm_cpuid2, kvm_cpuid_entry2, make_kvm_cpuid2

VENDOR_INTEL = b"GenuineIntel"
VENDOR_AMD = b"AuthenticAMD"
VENDOR_HYGON = b"HygonGenuine"  # follows AMD's topology leaves

LEAF_VENDOR = 0x0
LEAF_FEATURES = 0x1
LEAF_CACHE_PARAMS = 0x4
LEAF_THERMAL_POWER = 0x6
LEAF_TOPOLOGY = 0xB
LEAF_TOPOLOGY_V2 = 0x1F
LEAF_EXT_FEATURES = 0x80000001
LEAF_ADDRESS_SIZES = 0x80000008
LEAF_AMD_TOPOLOGY = 0x8000001E

# SDM CPUID.01H: EBX[31:24] initial APIC ID, EBX[23:16] max logical processor IDs in the package;
# ECX[31] is reserved for hypervisors ("hypervisor present"), EDX[28] HTT.
LEAF1_EBX_APIC_ID_SHIFT = 24
LEAF1_EBX_LOGICAL_COUNT_SHIFT = 16
LEAF1_ECX_HYPERVISOR = 1 << 31
#: SDM CPUID.01H:ECX[24]: the LAPIC timer has TSC-deadline mode. KVM emulates it but leaves it out
#: of KVM_GET_SUPPORTED_CPUID; userspace sets it when KVM_CAP_TSC_DEADLINE_TIMER is present (api.rst).
LEAF1_ECX_TSC_DEADLINE = 1 << 24
LEAF1_EDX_HTT = 1 << 28
# SDM CPUID.04H: EAX[31:26] cores per package - 1, EAX[25:14] logical processors sharing
# this cache - 1, EAX[7:5] cache level.
LEAF4_EAX_CORES_SHIFT = 26
LEAF4_EAX_SHARING_SHIFT = 14
LEAF4_EAX_KEEP = (1 << 14) - 1  # cache type, level, self-init, fully-associative
# SDM CPUID.0BH/1FH: EAX[4:0] shift to the next level's ID, EBX[15:0] logical processors at
# this level, ECX[7:0] level number, ECX[15:8] level type, EDX x2APIC ID.
TOPOLOGY_LEVEL_INVALID = 0
TOPOLOGY_LEVEL_SMT = 1
TOPOLOGY_LEVEL_CORE = 2
# APM CPUID Fn8000_0001 ECX[1] CmpLegacy: HTT counts cores, not threads.
EXT_ECX_CMP_LEGACY = 1 << 1
# APM CPUID Fn8000_0008 ECX[7:0] NC (cores - 1), ECX[15:12] ApicIdSize.
LEAF80000008_ECX_KEEP = ~0xF0FF & 0xFFFFFFFF
LEAF80000008_APIC_ID_SIZE_SHIFT = 12


def build_cpuid(
    supported: kvm_cpuid2, cpu_index: int, num_cpus: int, *, tsc_deadline: bool = False
) -> ctypes.Structure:
    """A copy of ``supported`` (from KVM_GET_SUPPORTED_CPUID) edited for vCPU ``cpu_index`` of ``num_cpus``.

    Entries keep their order; missing extended-topology subleaves are appended.

    The hypervisor leaves (0x40000000: "KVMKVMKVM", 0x40000001: KVM features)
    are kept as KVM reports them. ``tsc_deadline`` (KVM_CAP_TSC_DEADLINE_TIMER)
    advertises the TSC-deadline LAPIC timer, which spares the guest calibrating
    its LAPIC timer against the PIT.
    """
    if not 0 <= cpu_index < num_cpus <= 255:
        raise ValueError(f"vCPU index {cpu_index} is not in 0..{num_cpus - 1}")
    entries = [kvm_cpuid_entry2.from_buffer_copy(e) for e in supported.entries[: supported.nent]]
    vendor = _vendor(entries)
    amd_like = vendor in (VENDOR_AMD, VENDOR_HYGON)
    core_bits = _bits_for(num_cpus)
    entries += _missing_topology_subleaves(entries)
    for entry in entries:
        fn = entry.function
        if fn == LEAF_FEATURES:
            _edit_leaf1(entry, cpu_index, num_cpus)
            if tsc_deadline:
                entry.ecx |= LEAF1_ECX_TSC_DEADLINE
        elif fn == LEAF_CACHE_PARAMS and vendor == VENDOR_INTEL:
            _edit_leaf4(entry, num_cpus)
        elif fn == LEAF_THERMAL_POWER:
            # SDM CPUID.06H: thermal and power management is not virtualized; report none.
            entry.eax = entry.ebx = entry.ecx = entry.edx = 0
        elif fn in (LEAF_TOPOLOGY, LEAF_TOPOLOGY_V2):
            _edit_topology(entry, cpu_index, num_cpus, core_bits)
        elif fn == LEAF_EXT_FEATURES and amd_like and num_cpus > 1:
            entry.ecx |= EXT_ECX_CMP_LEGACY  # APM Fn8000_0001_ECX[1]: logical processors are cores
        elif fn == LEAF_ADDRESS_SIZES and amd_like:
            # APM Fn8000_0008_ECX: NC = cores - 1; ApicIdSize = APIC ID bits for the core.
            entry.ecx = (entry.ecx & LEAF80000008_ECX_KEEP) | (num_cpus - 1) | (
                core_bits << LEAF80000008_APIC_ID_SIZE_SHIFT
            )
        elif fn == LEAF_AMD_TOPOLOGY and amd_like:
            # APM Fn8000_001E: EAX extended APIC ID; EBX[7:0] core ID, EBX[15:8] threads per core - 1;
            # ECX[7:0] node ID, ECX[10:8] nodes per processor - 1 (one node).
            entry.eax = cpu_index
            entry.ebx = cpu_index & 0xFF
            entry.ecx = 0
            entry.edx = 0
    return make_kvm_cpuid2(entries)


def _missing_topology_subleaves(entries: list[kvm_cpuid_entry2]) -> list[kvm_cpuid_entry2]:
    """Empty entries for the SMT, core and terminating subleaves (0, 1, 2) of 0xB/0x1F that KVM left out.

    Some KVMs report only subleaf 0; without the core level a guest would
    take every vCPU for a package of its own (SDM CPUID.0BH: enumeration stops
    at the first subleaf whose level type is 0).
    """
    present = {(e.function, e.index) for e in entries}
    added = []
    for fn in (LEAF_TOPOLOGY, LEAF_TOPOLOGY_V2):
        if (fn, 0) not in present:
            continue
        for index in (0, 1, 2):
            if (fn, index) not in present:
                added.append(kvm_cpuid_entry2(function=fn, index=index, flags=KVM_CPUID_FLAG_SIGNIFCANT_INDEX))
    return added


def _edit_leaf1(entry: kvm_cpuid_entry2, cpu_index: int, num_cpus: int) -> None:
    # SDM CPUID.01H:EBX[31:24] initial APIC ID, [23:16] logical processor count; keep [15:0].
    entry.ebx = (entry.ebx & 0xFFFF) | (cpu_index << LEAF1_EBX_APIC_ID_SHIFT) | (
        num_cpus << LEAF1_EBX_LOGICAL_COUNT_SHIFT
    )
    entry.ecx |= LEAF1_ECX_HYPERVISOR  # SDM: ECX[31] is 0 on hardware; set means "running under a hypervisor"
    if num_cpus > 1:
        entry.edx |= LEAF1_EDX_HTT  # SDM CPUID.01H:EDX[28]: EBX[23:16] is valid
    else:
        entry.edx &= ~LEAF1_EDX_HTT


def _edit_leaf4(entry: kvm_cpuid_entry2, num_cpus: int) -> None:
    # SDM CPUID.04H: an L3 cache is shared by the whole package, L1/L2 by one core's (single) thread.
    level = (entry.eax >> 5) & 0x7
    if entry.eax & 0x1F == 0:  # cache type 0: no more caches, leave the terminating subleaf
        return
    sharing = num_cpus - 1 if level >= 3 else 0
    entry.eax = (entry.eax & LEAF4_EAX_KEEP) | (sharing << LEAF4_EAX_SHARING_SHIFT) | (
        (num_cpus - 1) << LEAF4_EAX_CORES_SHIFT
    )


def _edit_topology(entry: kvm_cpuid_entry2, cpu_index: int, num_cpus: int, core_bits: int) -> None:
    # SDM CPUID.0BH/1FH: subleaf 0 is the SMT level (1 thread, no ID bits), subleaf 1 the core
    # level (num_cpus cores, core_bits ID bits), later subleaves are invalid. EDX is the x2APIC ID.
    index = entry.index
    if index == 0:
        entry.eax, entry.ebx, entry.ecx = 0, 1, (TOPOLOGY_LEVEL_SMT << 8) | index
    elif index == 1:
        entry.eax, entry.ebx, entry.ecx = core_bits, num_cpus, (TOPOLOGY_LEVEL_CORE << 8) | index
    else:
        entry.eax, entry.ebx, entry.ecx = 0, 0, (TOPOLOGY_LEVEL_INVALID << 8) | (index & 0xFF)
    entry.edx = cpu_index


def _vendor(entries: list[kvm_cpuid_entry2]) -> bytes:
    """The vendor string from leaf 0 (EBX, EDX, ECX, in that order)."""
    for entry in entries:
        if entry.function == LEAF_VENDOR:
            return b"".join(v.to_bytes(4, "little") for v in (entry.ebx, entry.edx, entry.ecx))
    return b""


def _bits_for(count: int) -> int:
    """Bits needed to number ``count`` IDs (0 for one)."""
    return (count - 1).bit_length()
