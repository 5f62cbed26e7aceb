"""Address buses that route a vCPU's port I/O and MMIO exits to devices.

A device on a bus (:class:`~firelet.devices.protocols.BusDevice`) answers
``read(offset, data)`` by filling ``data`` and ``write(offset, data)`` by
consuming it; ``offset`` is relative to the start of the range the device was
inserted at. An access nobody claims reads as all
ones and writes are dropped, as on real hardware.

Devices may be called from several vCPU threads at once and do their own
locking (each keeps its state behind one lock), so the bus itself takes none.
The builder inserts every device before any vCPU exists, but an insert is safe
while vCPUs run too (for hotplug): it builds a new table and publishes it with
one assignment, so a lookup sees the old table or the new one, never half of each.
Lookups that hit a device are cached: a guest touches the same few registers
over and over (the UART's THR and LSR above all), and the cache is bounded by
the total size of the devices' ranges.
"""

from __future__ import annotations

import bisect

from firelet.devices.protocols import BusDevice


class BusError(Exception):
    """Two devices were given overlapping ranges (a builder bug)."""


class Bus:
    """Non-overlapping ``[base, base+length)`` ranges, each owned by one device."""

    def __init__(self) -> None:
        #: (bases, entries): sorted range starts and their (base, length, device); replaced whole.
        self._table: tuple[list[int], list[tuple[int, int, BusDevice]]] = ([], [])
        self._hits: dict[int, tuple[int, BusDevice]] = {}

    def insert(self, device: BusDevice, base: int, length: int) -> None:
        if length <= 0:
            raise BusError(f"empty range at {base:#x}")
        bases, entries = self._table
        index = bisect.bisect_left(bases, base)
        if index > 0:
            prev_base, prev_len, _ = entries[index - 1]
            if prev_base + prev_len > base:
                raise BusError(f"range {base:#x}+{length:#x} overlaps {prev_base:#x}+{prev_len:#x}")
        if index < len(entries) and entries[index][0] < base + length:
            raise BusError(f"range {base:#x}+{length:#x} overlaps {entries[index][0]:#x}")
        self._table = ([*bases[:index], base, *bases[index:]],
                       [*entries[:index], (base, length, device), *entries[index:]])
        # A hit cached from the old table stays right: inserts never move a device.
        self._hits = {}

    def _find(self, addr: int) -> tuple[int, BusDevice] | None:
        hit = self._hits.get(addr)
        if hit is not None:
            return hit
        bases, entries = self._table
        index = bisect.bisect_right(bases, addr) - 1
        if index < 0:
            return None
        base, length, device = entries[index]
        if addr >= base + length:
            return None
        hit = self._hits[addr] = (addr - base, device)
        return hit

    def read(self, addr: int, data: memoryview) -> bool:
        """Serve a read at ``addr``; returns False (and fills 0xff) if nothing is there."""
        found = self._find(addr)
        if found is None:
            data[:] = b"\xff" * len(data)
            return False
        found[1].read(found[0], data)
        return True

    def write(self, addr: int, data: bytes | memoryview) -> bool:
        """Serve a write at ``addr``; returns False if nothing is there."""
        found = self._find(addr)
        if found is None:
            return False
        found[1].write(found[0], data)
        return True

    def devices(self) -> list[tuple[int, int, BusDevice]]:
        return list(self._table[1])
