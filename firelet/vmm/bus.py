"""Address buses that route a vCPU's port I/O and MMIO exits to devices.

A device on a bus answers ``read(offset, data)`` by filling ``data`` and
``write(offset, data)`` by consuming it; ``offset`` is relative to the start of
the range the device was inserted at. An access nobody claims reads as all
ones and writes are dropped, as on real hardware.
"""

from __future__ import annotations

import bisect
import threading
from typing import Protocol


class BusDevice(Protocol):
    def read(self, offset: int, data: memoryview) -> None: ...

    def write(self, offset: int, data: bytes | memoryview) -> None: ...


class BusError(Exception):
    """Two devices were given overlapping ranges (a builder bug)."""


class Bus:
    """Non-overlapping ``[base, base+length)`` ranges, each owned by one device.

    Devices are called with the bus's per-device lock held, so a device sees one
    access at a time even with several vCPU threads.
    """

    def __init__(self) -> None:
        self._bases: list[int] = []
        self._entries: list[tuple[int, int, BusDevice, threading.Lock]] = []

    def insert(self, device: BusDevice, base: int, length: int) -> None:
        if length <= 0:
            raise BusError(f"empty range at {base:#x}")
        index = bisect.bisect_left(self._bases, base)
        if index > 0:
            prev_base, prev_len, _, _ = self._entries[index - 1]
            if prev_base + prev_len > base:
                raise BusError(f"range {base:#x}+{length:#x} overlaps {prev_base:#x}+{prev_len:#x}")
        if index < len(self._entries) and self._entries[index][0] < base + length:
            raise BusError(f"range {base:#x}+{length:#x} overlaps {self._entries[index][0]:#x}")
        self._bases.insert(index, base)
        self._entries.insert(index, (base, length, device, threading.Lock()))

    def _find(self, addr: int) -> tuple[int, BusDevice, threading.Lock] | None:
        index = bisect.bisect_right(self._bases, addr) - 1
        if index < 0:
            return None
        base, length, device, lock = self._entries[index]
        if addr >= base + length:
            return None
        return addr - base, device, lock

    def read(self, addr: int, data: memoryview) -> bool:
        """Serve a read at ``addr``; returns False (and fills 0xff) if nothing is there."""
        found = self._find(addr)
        if found is None:
            data[:] = b"\xff" * len(data)
            return False
        offset, device, lock = found
        with lock:
            device.read(offset, data)
        return True

    def write(self, addr: int, data: bytes | memoryview) -> bool:
        """Serve a write at ``addr``; returns False if nothing is there."""
        found = self._find(addr)
        if found is None:
            return False
        offset, device, lock = found
        with lock:
            device.write(offset, data)
        return True

    def devices(self) -> list[tuple[int, int, BusDevice]]:
        return [(base, length, device) for base, length, device, _ in self._entries]
