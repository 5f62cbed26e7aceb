"""The Intel MultiProcessor table, so that a guest without ACPI finds its CPUs, I/O APIC and IRQs.

Built per the Intel MultiProcessor Specification 1.4 (May 1997), chapter 4:
an MP floating pointer structure (§4.1) followed by an MP configuration table
header (§4.2) and its base entries (§4.3), all at MPTABLE_START in the EBDA,
where Linux looks for it (the last KiB of base memory).
"""

from __future__ import annotations

import struct

from firelet.arch.x86_64 import layout
from firelet.errors import FireletError
from firelet.memory.guest import GuestMemory

#: APIC IDs are one byte and the I/O APIC takes ID ``num_cpus``; 32 keeps the table inside the EBDA KiB.
MAX_CPUS = 32
#: Legacy IRQs routed 1:1 to I/O APIC pins 0..23.
NUM_IOAPIC_PINS = 24

SPEC_REV = 4  # §4.1, §4.2: 1.4 is revision 04h
FLOATING_SIGNATURE = b"_MP_"
TABLE_SIGNATURE = b"PCMP"
OEM_ID = b"FIRELET "  # 8 bytes, space padded (§4.2)
PRODUCT_ID = b"000000000000"  # 12 bytes (§4.2)

# §4.1 Table 4-1: signature, physical address pointer, length (16-byte units), spec_rev,
# checksum, feature bytes 1..5 (all zero: a configuration table is present, no IMCR).
_FLOATING = struct.Struct("<4sIBBB5s")
# §4.2 Table 4-2: signature, base table length, spec_rev, checksum, OEM ID, product ID,
# OEM table pointer, OEM table size, entry count, local APIC address, extended length/checksum.
_HEADER = struct.Struct("<4sHBB8s12sIHHIHBB")
# §4.3.1 Table 4-4: processor entry (20 bytes).
_PROCESSOR = struct.Struct("<BBBBII8s")
# §4.3.2 Table 4-5: bus entry; §4.3.3 Table 4-7: I/O APIC entry; §4.3.4/§4.3.5: interrupt entries.
_BUS = struct.Struct("<BB6s")
_IOAPIC = struct.Struct("<BBBBI")
_INTERRUPT = struct.Struct("<BBHBBBB")

ENTRY_PROCESSOR, ENTRY_BUS, ENTRY_IOAPIC, ENTRY_IO_INTERRUPT, ENTRY_LOCAL_INTERRUPT = range(5)
CPU_ENABLED = 0x01  # §4.3.1 CPU flags: EN
CPU_BOOTSTRAP = 0x02  # §4.3.1 CPU flags: BP
APIC_VERSION = 0x14  # local APIC version of an integrated (xAPIC) APIC, as KVM emulates
IOAPIC_VERSION = 0x11  # §4.3.3: the 82093AA I/O APIC reports 11h
IOAPIC_ENABLED = 0x01
#: §4.3.1 CPU signature: family 6 (stepping/model 0), feature flags: FPU (bit 0) and APIC (bit 9).
CPU_SIGNATURE = 0x600
CPU_FEATURES = (1 << 0) | (1 << 9)
ISA_BUS_ID = 0
ISA_BUS_TYPE = b"ISA   "  # §4.3.2 Table 4-8, space padded to 6 bytes
# §4.3.4 Table 4-10 interrupt types.
INT_TYPE_INT, INT_TYPE_NMI, INT_TYPE_SMI, INT_TYPE_EXTINT = range(4)
IRQ_FLAGS_CONFORM = 0  # polarity and trigger mode conform to the bus (ISA: edge, active high)
ALL_LOCAL_APICS = 0xFF
#: End of conventional (base) memory: 640 KiB; the EBDA and the table must end below it.
BASE_MEMORY_END = 0xA0000


class MPTableError(FireletError):
    """The MP table cannot describe the requested machine."""


def mptable_bytes(num_cpus: int, base: int = layout.MPTABLE_START) -> bytes:
    """The floating pointer followed by the configuration table, for placing at ``base``."""
    if not 1 <= num_cpus <= MAX_CPUS:
        raise MPTableError(f"the MP table describes 1 to {MAX_CPUS} vCPUs, not {num_cpus}; choose fewer vCPUs")
    ioapic_id = num_cpus
    entries = bytearray()
    for cpu in range(num_cpus):
        flags = CPU_ENABLED | (CPU_BOOTSTRAP if cpu == 0 else 0)
        entries += _PROCESSOR.pack(ENTRY_PROCESSOR, cpu, APIC_VERSION, flags, CPU_SIGNATURE, CPU_FEATURES, bytes(8))
    entries += _BUS.pack(ENTRY_BUS, ISA_BUS_ID, ISA_BUS_TYPE)
    entries += _IOAPIC.pack(ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, IOAPIC_ENABLED, layout.IOAPIC_START)
    for irq in range(NUM_IOAPIC_PINS):
        entries += _INTERRUPT.pack(ENTRY_IO_INTERRUPT, INT_TYPE_INT, IRQ_FLAGS_CONFORM, ISA_BUS_ID, irq, ioapic_id, irq)
    # §5.1 (virtual wire mode): the PIC's output reaches the BSP's LINT0 as ExtINT; NMI goes to every LINT1.
    entries += _INTERRUPT.pack(ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, IRQ_FLAGS_CONFORM, ISA_BUS_ID, 0, 0, 0)
    entries += _INTERRUPT.pack(
        ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI, IRQ_FLAGS_CONFORM, ISA_BUS_ID, 0, ALL_LOCAL_APICS, 1
    )
    entry_count = num_cpus + 1 + 1 + NUM_IOAPIC_PINS + 2

    table_addr = base + _FLOATING.size
    header = bytearray(
        _HEADER.pack(
            TABLE_SIGNATURE, _HEADER.size + len(entries), SPEC_REV, 0, OEM_ID, PRODUCT_ID,
            0, 0, entry_count, layout.APIC_START, 0, 0, 0,
        )
    )  # fmt: skip
    table = header + entries
    table[7] = _checksum(table)  # §4.2: checksum byte at offset 7 makes the base table sum to zero
    floating = bytearray(_FLOATING.pack(FLOATING_SIGNATURE, table_addr, 1, SPEC_REV, 0, bytes(5)))
    floating[10] = _checksum(floating)  # §4.1: checksum byte at offset 10
    return bytes(floating + table)


def write_mptable(mem: GuestMemory, num_cpus: int) -> None:
    """Write the MP floating pointer and configuration table at MPTABLE_START."""
    data = mptable_bytes(num_cpus)
    if layout.MPTABLE_START + len(data) > BASE_MEMORY_END:
        raise MPTableError(f"the MP table for {num_cpus} vCPUs does not fit below 0xA0000; choose fewer vCPUs")
    mem.write(layout.MPTABLE_START, data)


def _checksum(data: bytes | bytearray) -> int:
    """The byte that makes ``data`` (with that byte zero) sum to 0 mod 256."""
    return -sum(data) & 0xFF
