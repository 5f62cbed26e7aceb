"""Reading KVM's coalesced I/O ring (struct kvm_coalesced_mmio_ring), as KVM fills it."""

from __future__ import annotations

import mmap
import struct

from hypothesis import given
from hypothesis import strategies as st

from firelet.vstate.coalesced import CoalescedPio, CoalescedRing

from concurrent_reader import watch_while_writing

PAGE = 4096
CAPACITY = (PAGE - 8) // 24


def _ring_with(entries: list[tuple[int, int, bytes]], first: int = 0) -> tuple[CoalescedRing, bytearray]:
    """A ring page holding ``(port, pio, data)`` writes from slot ``first`` on, as KVM appends them."""
    page = bytearray(PAGE)
    slot = first
    for addr, pio, data in entries:
        struct.pack_into("<QII8s", page, 8 + slot * 24, addr, len(data), pio, data.ljust(8, b"\0"))
        slot = (slot + 1) % CAPACITY
    struct.pack_into("<II", page, 0, first, slot)
    ring = CoalescedRing()
    ring.attach(memoryview(page))
    return ring, page


class _VmFd:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int, bool]] = []

    def register_coalesced_io(self, addr: int, size: int, *, pio: bool) -> None:
        self.calls.append(("register", addr, size, pio))

    def unregister_coalesced_io(self, addr: int, size: int, *, pio: bool) -> None:
        self.calls.append(("unregister", addr, size, pio))


def test_ring_entries_come_out_in_order_and_the_slots_go_back_to_kvm() -> None:
    ring, page = _ring_with([(0x3F8, 1, b"a"), (0x3F8, 1, b"b"), (0xD000_0000, 0, b"\1\2\3\4")], first=CAPACITY - 1)
    assert ring.take() == [(0x3F8, True, b"a"), (0x3F8, True, b"b"), (0xD000_0000, False, b"\1\2\3\4")]
    first, last = struct.unpack_from("<II", page, 0)
    assert first == last == 2  # wrapped around the end of the page
    assert ring.take() == []


def test_ring_with_indices_out_of_range_is_dropped_not_looped_over() -> None:
    ring, page = _ring_with([])
    struct.pack_into("<II", page, 0, 5, CAPACITY + 7)
    assert ring.take() == []
    assert ring.take() == []


def test_kvm_reading_first_meanwhile_sees_old_or_new_never_zero() -> None:
    """KVM reads ``first`` to find room while we hand slots back: an instant of 0 (as
    ``struct.pack_into`` writes) would let it overwrite writes we have not taken yet."""
    shared = mmap.mmap(-1, PAGE)  # MAP_SHARED: the forked reader sees our stores
    page = memoryview(shared)
    struct.pack_into("<QII8s", page, 8 + 1 * 24, 0x3F8, 1, 1, b"x".ljust(8, b"\0"))
    ring = CoalescedRing()
    ring.attach(page)
    header = page[0:8].cast("I")  # [first, last], written with one store each as KVM does

    def take_one() -> None:
        header[0], header[1] = 1, 2  # KVM appended the write in slot 1
        assert ring.take() == [(0x3F8, True, b"x")]

    take_one()
    reads, bad = watch_while_writing(lambda: header[0], lambda _prev, first: first in (1, 2), take_one, 0.5)
    assert reads > 10_000 and bad == [], bad
    ring.close()
    header.release()
    page.release()
    shared.close()


def test_ring_without_a_page_yet_is_empty() -> None:
    assert CoalescedRing().take() == []


@given(st.lists(st.tuples(st.sampled_from([0x3F8, 0x3F9, 0x2F8]), st.integers(0, 1),
                          st.binary(min_size=1, max_size=8)), max_size=CAPACITY - 1),
       st.integers(0, CAPACITY - 1))
def test_pio_batch_takes_only_its_own_port_writes(entries: list[tuple[int, int, bytes]], first: int) -> None:
    ring, _ = _ring_with(entries, first=first)
    batch = CoalescedPio(_VmFd(), ring, 0x3F8, 1)
    assert batch.take() == [(0, data[0]) for addr, pio, data in entries if pio and addr == 0x3F8]


def test_pio_batch_registers_and_unregisters_its_ports_once_per_change() -> None:
    vm = _VmFd()
    batch = CoalescedPio(vm, CoalescedRing(), 0x3F8, 1)
    for active in (True, True, False, False, True):
        batch.set_active(active)
    assert vm.calls == [("register", 0x3F8, 1, True), ("unregister", 0x3F8, 1, True), ("register", 0x3F8, 1, True)]


def test_first_registration_can_be_deferred_to_the_builder() -> None:
    vm = _VmFd()
    deferred: list = []
    pio = CoalescedPio(vm, CoalescedRing(), 0x3F8, 1, defer_first=deferred.append)
    pio.set_active(True)
    assert pio.active and vm.calls == [] and len(deferred) == 1
    deferred[0]()  # the builder's helper thread, before any vCPU runs
    assert vm.calls == [("register", 0x3F8, 1, True)]
    pio.set_active(False)  # later switches are immediate
    assert vm.calls[-1] == ("unregister", 0x3F8, 1, True) and not pio.active
