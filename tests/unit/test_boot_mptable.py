"""The MP table read back the way a guest's MP-spec parser reads it."""

from __future__ import annotations

import struct

import pytest

from firelet.arch.x86_64 import layout
from firelet.arch.x86_64.mptable import MAX_CPUS, MPTableError, write_mptable
from firelet.arch.x86_64.ram import guest_ram
from firelet.memory.guest import GuestMemory

# Intel MP spec 1.4 §4.3: base entry lengths by type.
_ENTRY_LENGTHS = {0: 20, 1: 8, 2: 8, 3: 8, 4: 8}


@pytest.fixture
def mem() -> GuestMemory:
    memory = guest_ram(16 * layout.MiB)
    yield memory
    memory.close()


def _parse(mem: GuestMemory) -> tuple[bytes, bytes, list[bytes]]:
    """(floating pointer, table header, entries), found the way Linux does: by the _MP_ signature."""
    floating = mem.read(layout.MPTABLE_START, 16)
    assert floating[:4] == b"_MP_"
    (table_addr,) = struct.unpack_from("<I", floating, 4)
    header = mem.read(table_addr, 44)
    assert header[:4] == b"PCMP"
    length, count = struct.unpack_from("<H", header, 4)[0], struct.unpack_from("<H", header, 34)[0]
    table = mem.read(table_addr, length)
    entries, pos = [], 44
    while pos < length:
        size = _ENTRY_LENGTHS[table[pos]]
        entries.append(table[pos : pos + size])
        pos += size
    assert pos == length
    assert len(entries) == count
    return floating, table, entries


@pytest.mark.parametrize("num_cpus", [1, 4, 32])
def test_checksums_lengths_and_counts(mem: GuestMemory, num_cpus: int) -> None:
    write_mptable(mem, num_cpus)
    floating, table, entries = _parse(mem)
    assert sum(floating) % 256 == 0
    assert floating[8] == 1 and floating[9] == 4  # length in paragraphs, spec 1.4
    assert floating[11:16] == bytes(5)  # a configuration table is present (no default config)
    assert sum(table) % 256 == 0
    assert table[6] == 4  # spec revision
    assert struct.unpack_from("<I", table, 36)[0] == 0xFEE00000  # local APIC address
    assert len(entries) == num_cpus + 1 + 1 + 24 + 2
    assert struct.unpack_from("<I", floating, 4)[0] + len(table) <= 0xA0000


@pytest.mark.parametrize("num_cpus", [1, 4, 32])
def test_entries_describe_cpus_bus_ioapic_and_interrupts(mem: GuestMemory, num_cpus: int) -> None:
    write_mptable(mem, num_cpus)
    _, _, entries = _parse(mem)
    cpus = [e for e in entries if e[0] == 0]
    assert [e[1] for e in cpus] == list(range(num_cpus))  # APIC IDs
    assert [e[3] for e in cpus] == [0x03] + [0x01] * (num_cpus - 1)  # EN on all, BP on cpu 0
    (bus,) = [e for e in entries if e[0] == 1]
    assert bus[2:8] == b"ISA   "
    (ioapic,) = [e for e in entries if e[0] == 2]
    assert ioapic[1] == num_cpus and ioapic[2] == 0x11 and ioapic[3] & 1
    assert struct.unpack_from("<I", ioapic, 4)[0] == 0xFEC00000
    io_ints = [e for e in entries if e[0] == 3]
    # interrupt type INT, source ISA IRQ n, destination I/O APIC, pin n; from the ISA bus
    assert [(e[1], e[5], e[6], e[7]) for e in io_ints] == [(0, irq, num_cpus, irq) for irq in range(24)]
    assert {e[4] for e in io_ints} == {bus[1]}
    lints = [e for e in entries if e[0] == 4]
    assert [(e[1], e[7]) for e in lints] == [(3, 0), (1, 1)]  # ExtINT on LINT0, NMI on LINT1
    assert lints[1][6] == 0xFF  # NMI to all local APICs


@pytest.mark.parametrize("num_cpus", [0, MAX_CPUS + 1, 255])
def test_cpu_count_out_of_range_is_an_error(mem: GuestMemory, num_cpus: int) -> None:
    with pytest.raises(MPTableError, match=r"choose fewer vCPUs|1 to 32"):
        write_mptable(mem, num_cpus)
