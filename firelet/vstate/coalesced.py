"""Coalesced I/O: guest writes KVM queues in a ring instead of exiting to the VMM.

For a registered range, KVM appends each guest write to a ring shared with
userspace and lets the vCPU run on (linux/kvm.h ``struct
kvm_coalesced_mmio_ring``; Documentation/virt/kvm/api.rst,
KVM_REGISTER_COALESCED_MMIO). The VMM replays the writes later, in order. That
is only right for a register whose writes the guest never waits on, such as a
UART's transmit register while its THRE interrupt is off: Linux's serial
console writes a byte there after each LSR poll, so queueing the writes halves
the exits of a boot log. When the ring is full KVM exits as usual.

:class:`CoalescedRing` reads the ring; :class:`CoalescedPio` is what a device
holds: switch batching on and off, and take the queued writes for its ports.
Devices see only that small interface, never KVM.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from typing import Any

from firelet.errors import FireletError
from firelet.log import get_logger

log = get_logger(__name__)

#: ``struct kvm_coalesced_mmio_ring``: ``__u32 first`` (the reader's index: ours),
#: ``__u32 last`` (KVM's), then the entries.
_HEADER = struct.Struct("<II")
#: ``struct kvm_coalesced_mmio``: phys_addr, len, pio, data[8].
_ENTRY = struct.Struct("<QII8s")


def _store_first(page: memoryview, first: int) -> None:
    """Write ``first`` with one store: KVM reads it meanwhile to find room, and
    ``struct.pack_into`` would show it 0 for an instant (zeroes, then writes)."""
    page[0:4].cast("I")[0] = first


class CoalescedRing:
    """The VM's one ring page; entries are taken under a lock, in KVM's order."""

    def __init__(self) -> None:
        self._page: memoryview | None = None
        self._capacity = 0
        self._lock = threading.Lock()
        self._before_close: list[Callable[[], None]] = []

    def attach(self, page: memoryview | None) -> None:
        """Give the ring its page (a view of a vCPU's mapped area, once the first vCPU exists)."""
        with self._lock:
            view = None if page is None else memoryview(page)
            self._page = view
            self._capacity = 0 if view is None else (len(view) - _HEADER.size) // _ENTRY.size

    def before_close(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` (e.g. a device's last flush of its queued writes) when the ring closes."""
        self._before_close.append(fn)

    def take(self) -> list[tuple[int, bool, bytes]]:
        """Remove and return the queued writes as ``(address, pio, data)``, oldest first."""
        with self._lock:
            page, capacity = self._page, self._capacity
            if page is None or capacity <= 0:
                return []
            first, last = _HEADER.unpack_from(page, 0)
            if first == last:
                return []
            if first >= capacity or last >= capacity:  # never from KVM; do not loop on garbage
                log.warning("coalesced ring indices out of range (first=%d last=%d); dropping it", first, last)
                _store_first(page, last if last < capacity else 0)
                return []
            out = []
            while first != last:
                addr, length, pio, data = _ENTRY.unpack_from(page, _HEADER.size + first * _ENTRY.size)
                out.append((addr, bool(pio), data[: min(length, 8)]))
                first = (first + 1) % capacity
            _store_first(page, first)  # hand the slots back to KVM
            return out

    def close(self) -> None:
        """Run the before-close calls, then let go of the page (before its vCPU unmaps it)."""
        for fn in self._before_close:
            fn()
        with self._lock:
            if self._page is not None:
                self._page.release()
            self._page, self._capacity = None, 0


class CoalescedPio:
    """Batching of guest writes to ports ``[base, base + size)``, switched by the device.

    ``take()`` returns ``(offset, value)`` pairs (offset from ``base``, first data
    byte), in the order the guest wrote them. The device calls it under its own
    lock before it serves any other access, so replayed writes land in order.
    """

    def __init__(self, vm_fd: Any, ring: CoalescedRing, base: int, size: int,
                 defer_first: Callable[[Callable[[], object]], None] | None = None) -> None:
        self._vm_fd = vm_fd
        self._ring = ring
        self.base, self.size = base, size
        self.active = False
        #: Hands the first registration to the builder's helper thread (before any vCPU runs).
        self._defer_first = defer_first

    def set_active(self, active: bool) -> None:
        """Register (True) or unregister (False) the ports with KVM; a failure leaves batching off."""
        if active == self.active:
            return
        defer, self._defer_first = self._defer_first, None
        if active and defer is not None:
            self.active = True  # nothing reaches the ring before the registration is done
            defer(lambda: self._register(True))
            return
        self._register(active)

    def _register(self, active: bool) -> None:
        try:
            if active:
                self._vm_fd.register_coalesced_io(self.base, self.size, pio=True)
            else:
                self._vm_fd.unregister_coalesced_io(self.base, self.size, pio=True)
        except FireletError as exc:  # KvmError: e.g. no KVM_CAP_COALESCED_PIO
            log.debug("coalesced I/O for ports %#x+%d: %s", self.base, self.size, exc)
            self.active = False
            return
        self.active = active

    def take(self) -> list[tuple[int, int]]:
        end = self.base + self.size
        return [(addr - self.base, data[0]) for addr, pio, data in self._ring.take()
                if pio and self.base <= addr < end and data]
