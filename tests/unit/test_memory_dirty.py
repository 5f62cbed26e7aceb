"""Dirty page tracking on the host's real /dev/kvm, with a tiny real-mode guest that writes RAM."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firelet.builder.boot import _setup_vm
from firelet.builder.kernel_waits import KernelWaits
from firelet.kvm import Kvm, KvmError, VmFd
from firelet.kvm import structs as S
from firelet.memory.dirty import (
    fetch_all_dirty_pages,
    fetch_dirty_pages,
    pages_in_bitmap,
    slot_flags,
)
from firelet.memory.guest import GuestMemory

CODE_ADDR = 0x1000
# mov byte [0x3000],0x42 ; mov byte [0x4000],0x43 ; mov byte [0x12345],?? is out of a 64 KiB segment, so:
# mov ax,0x1000 ; mov ds,ax ; mov byte [0x2345],0x44 (= 0x12345) ; out 0x80,al (an exit to the VMM)
WRITER = bytes([
    0xC6, 0x06, 0x00, 0x30, 0x42,
    0xC6, 0x06, 0x00, 0x40, 0x43,
    0xB8, 0x00, 0x10, 0x8E, 0xD8,
    0xC6, 0x06, 0x45, 0x23, 0x44,
    0xE6, 0x80,
])
#: Two regions (slots 0 and 1) with a gap, like RAM around the MMIO gap.
RANGES = [(0, 0x8000), (0x10000, 0x8000)]


@pytest.fixture
def kvm() -> Iterator[Kvm]:
    with Kvm() as k:
        yield k


def _run_writer(vm: VmFd, memory: GuestMemory) -> None:
    memory.write(CODE_ADDR, WRITER)
    vcpu = vm.create_vcpu(0)
    try:
        sregs = vcpu.get_sregs()
        sregs.cs.base = sregs.cs.selector = 0
        sregs.ds.base = sregs.ds.selector = 0
        vcpu.set_sregs(sregs)
        vcpu.set_regs(S.kvm_regs(rip=CODE_ADDR, rflags=0x2))
        assert vcpu.run() and vcpu.exit_reason == S.KVM_EXIT_IO
        assert vcpu.run_struct.io.port == 0x80
    finally:
        vcpu.close()
    assert (memory.read_u8(0x3000), memory.read_u8(0x4000), memory.read_u8(0x12345)) == (0x42, 0x43, 0x44)


def test_the_log_holds_the_pages_the_guest_wrote_and_is_cleared_by_fetching(kvm: Kvm) -> None:
    memory = GuestMemory.anonymous(RANGES)
    try:
        with kvm.create_vm() as vm:
            for slot, region in enumerate(memory.regions):
                vm.set_user_memory_region(slot, region.guest_addr, region.size, region.host_addr, slot_flags(True))
            assert fetch_all_dirty_pages(vm, memory) == []
            memory.write(0x5000, b"the VMM's own write is not in KVM's log")
            _run_writer(vm, memory)
            assert fetch_dirty_pages(vm, memory, 0) == [0x3, 0x4]
            assert fetch_dirty_pages(vm, memory, 1) == [0x12]  # absolute page numbers, not slot-relative
            assert fetch_all_dirty_pages(vm, memory) == []  # fetching cleared the log
    finally:
        memory.close()


@pytest.mark.parametrize("track", [True, False])
def test_the_builder_registers_slots_for_dirty_logging_only_when_asked(kvm: Kvm, track: bool) -> None:
    memory = GuestMemory.anonymous(RANGES)
    try:
        with kvm.create_vm() as vm:
            waits = KernelWaits()
            _setup_vm(vm, memory, waits, track_dirty_pages=track)
            waits.finish()
            if track:
                _run_writer(vm, memory)
                assert fetch_all_dirty_pages(vm, memory) == [0x3, 0x4, 0x12]
            else:
                with pytest.raises(KvmError):
                    fetch_all_dirty_pages(vm, memory)  # KVM: this slot does not log dirty pages
    finally:
        memory.close()


@given(st.binary(max_size=64), st.integers(0, 1 << 40))
def test_pages_in_bitmap_are_the_set_bits_counted_from_the_first_page(bitmap: bytes, first: int) -> None:
    expected = [first + 8 * i + b for i, byte in enumerate(bitmap) for b in range(8) if byte >> b & 1]
    assert pages_in_bitmap(bitmap, first) == expected


def test_a_guest_on_memfd_ram_writes_into_the_fd_and_its_log(kvm: Kvm) -> None:
    memory = GuestMemory.memfd(RANGES)
    try:
        with kvm.create_vm() as vm:
            for slot, region in enumerate(memory.regions):
                vm.set_user_memory_region(slot, region.guest_addr, region.size, region.host_addr, slot_flags(True))
            _run_writer(vm, memory)
            assert fetch_all_dirty_pages(vm, memory) == [0x3, 0x4, 0x12]
        # The fd is all of RAM, regions back to back: another process reading it sees the guest's writes.
        assert os.pread(memory.fd, 1, 0x3000) == b"\x42"
        assert os.pread(memory.fd, 1, 0x8000 + 0x2345) == b"\x44"
    finally:
        memory.close()
