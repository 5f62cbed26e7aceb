"""Tiny real-mode guests on the real /dev/kvm: port I/O and MMIO exits, HLT, and kicks.

This machine's /dev/kvm emulates real mode instruction by instruction, which
is slow but fine for a handful of instructions.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

import pytest

from firelet.kvm import Kvm, VcpuFd, VmFd, install_kick_handler, kick_thread
from firelet.kvm import structs as S
from firelet.kvm.vcpu_fd import KICK_SIGNAL
from firelet.memory.guest import GuestMemory

CODE_ADDR = 0x1000
MMIO_ADDR = 0x2000  # not backed by a memory slot: accesses exit to the VMM

# mov dx,0x3f8 ; mov al,'A' ; out dx,al ; mov al,[0x2000] ; hlt
IO_MMIO_HLT = bytes([0xBA, 0xF8, 0x03, 0xB0, 0x41, 0xEE, 0xA0, 0x00, 0x20, 0xF4])
JMP_SELF = bytes([0xEB, 0xFE])  # jmp $


class Guest:
    """One VM with one 4 KiB page of RAM at CODE_ADDR and one real-mode vCPU at its start."""

    def __init__(self, kvm: Kvm, code: bytes) -> None:
        self.memory = GuestMemory.anonymous([(CODE_ADDR, 0x1000)])
        self.memory.write(CODE_ADDR, code)
        self.vm: VmFd = kvm.create_vm()
        region = self.memory.regions[0]
        self.vm.set_user_memory_region(0, region.guest_addr, region.size, region.host_addr)
        self.vcpu: VcpuFd = self.vm.create_vcpu(0)
        sregs = self.vcpu.get_sregs()
        sregs.cs.base = 0
        sregs.cs.selector = 0
        self.vcpu.set_sregs(sregs)
        regs = S.kvm_regs(rip=CODE_ADDR, rflags=0x2)
        self.vcpu.set_regs(regs)

    def close(self) -> None:
        self.vcpu.close()
        self.vm.close()
        self.memory.close()


@pytest.fixture
def kvm() -> Iterator[Kvm]:
    with Kvm() as k:
        yield k


def _run_to_exit(vcpu: VcpuFd) -> int:
    assert vcpu.run(), "KVM_RUN was interrupted with no kick"
    return vcpu.exit_reason


def test_kvm_guest_port_io_then_mmio_read_then_hlt(kvm: Kvm) -> None:
    guest = Guest(kvm, IO_MMIO_HLT)
    try:
        vcpu, run = guest.vcpu, guest.vcpu.run_struct

        assert _run_to_exit(vcpu) == S.KVM_EXIT_IO
        assert (run.io.port, run.io.direction, run.io.size, run.io.count) == (0x3F8, S.KVM_EXIT_IO_OUT, 1, 1)
        assert bytes(vcpu.io_data()) == b"A"

        assert _run_to_exit(vcpu) == S.KVM_EXIT_MMIO
        assert (run.mmio.phys_addr, run.mmio.len, run.mmio.is_write) == (MMIO_ADDR, 1, 0)
        data = vcpu.mmio_data()
        assert len(data) == 1
        data[0] = 0x5A

        assert _run_to_exit(vcpu) == S.KVM_EXIT_HLT
        regs = vcpu.get_regs()
        assert regs.rax & 0xFF == 0x5A
        assert regs.rip == CODE_ADDR + len(IO_MMIO_HLT)
        del data
    finally:
        guest.close()


def test_kvm_guest_port_in_data_is_writable(kvm: Kvm) -> None:
    # mov dx,0x3f8 ; in al,dx ; hlt
    guest = Guest(kvm, bytes([0xBA, 0xF8, 0x03, 0xEC, 0xF4]))
    try:
        vcpu = guest.vcpu
        assert _run_to_exit(vcpu) == S.KVM_EXIT_IO
        assert vcpu.run_struct.io.direction == S.KVM_EXIT_IO_IN
        data = vcpu.io_data()
        data[:] = b"\x7e"
        del data
        assert _run_to_exit(vcpu) == S.KVM_EXIT_HLT
        assert vcpu.get_regs().rax & 0xFF == 0x7E
    finally:
        guest.close()


@pytest.fixture
def kick_handler() -> Iterator[None]:
    old = signal.getsignal(KICK_SIGNAL)
    install_kick_handler()
    yield
    signal.signal(KICK_SIGNAL, old)


def test_kvm_guest_in_a_loop_is_kicked_out_from_another_thread(kvm: Kvm, kick_handler: None) -> None:
    guest = Guest(kvm, JMP_SELF)
    vcpu = guest.vcpu
    entered = threading.Event()
    results: list[bool] = []

    def vcpu_thread() -> None:
        entered.set()
        results.append(vcpu.run())

    thread = threading.Thread(target=vcpu_thread)
    try:
        thread.start()
        assert entered.wait(5)
        time.sleep(0.3)  # let it get into KVM_RUN and spin in the guest
        assert thread.is_alive(), f"the looping guest left KVM_RUN by itself: {results}"
        start = time.monotonic()
        vcpu.kick(thread.ident)
        thread.join(timeout=1.0)
        assert not thread.is_alive(), "vCPU thread still in KVM_RUN a second after the kick"
        assert time.monotonic() - start < 1.0
        assert results == [False]
        # immediate_exit stays set: the next run returns at once, until the VMM clears it.
        assert vcpu.run() is False
        vcpu.set_immediate_exit(False)
        assert vcpu.run_struct.immediate_exit == 0
    finally:
        if thread.is_alive():  # do not leave a thread spinning in the guest
            kick_thread(thread.ident)
            thread.join(5)
        guest.close()


def test_kvm_signal_alone_interrupts_kvm_run_without_a_retry(kvm: Kvm, kick_handler: None) -> None:
    """fcntl.ioctl does not retry KVM_RUN on EINTR, so the signal by itself ends the run."""
    guest = Guest(kvm, JMP_SELF)
    results: list[bool] = []
    thread = threading.Thread(target=lambda: results.append(guest.vcpu.run()))
    try:
        thread.start()
        time.sleep(0.3)
        assert thread.is_alive()
        kick_thread(thread.ident)
        thread.join(timeout=1.0)
        assert not thread.is_alive()
        assert results == [False]
        assert guest.vcpu.exit_reason == S.KVM_EXIT_INTR
        assert guest.vcpu.run_struct.immediate_exit == 0
    finally:
        if thread.is_alive():
            guest.vcpu.kick(thread.ident)
            thread.join(5)
        guest.close()


def test_kvm_immediate_exit_returns_without_running_the_guest(kvm: Kvm) -> None:
    guest = Guest(kvm, IO_MMIO_HLT)
    try:
        guest.vcpu.set_immediate_exit(True)
        assert guest.vcpu.run() is False
        assert guest.vcpu.get_regs().rip == CODE_ADDR  # not one instruction ran
        guest.vcpu.set_immediate_exit(False)
        assert _run_to_exit(guest.vcpu) == S.KVM_EXIT_IO
    finally:
        guest.close()


# mov dx,0x3f8 ; mov al,'h' ; out dx,al ; mov al,'i' ; out dx,al ; mov dx,0x3fd ; in al,dx ; hlt
OUT_OUT_IN_HLT = bytes([0xBA, 0xF8, 0x03, 0xB0, 0x68, 0xEE, 0xB0, 0x69, 0xEE, 0xBA, 0xFD, 0x03, 0xEC, 0xF4])


def test_kvm_coalesced_port_writes_queue_in_the_ring_instead_of_exiting(kvm: Kvm) -> None:
    """What the UART's transmit batching relies on, on the real KVM (firelet.vstate.coalesced)."""
    from firelet.kvm.ioctls import KVM_CAP_COALESCED_MMIO, KVM_CAP_COALESCED_PIO
    from firelet.vstate.coalesced import CoalescedPio, CoalescedRing

    guest = Guest(kvm, OUT_OUT_IN_HLT)
    ring = CoalescedRing()
    try:
        assert guest.vm.check_extension(KVM_CAP_COALESCED_PIO) > 0
        ring.attach(guest.vcpu.shared_page(guest.vm.check_extension(KVM_CAP_COALESCED_MMIO)))
        batch = CoalescedPio(guest.vm, ring, 0x3F8, 1)
        batch.set_active(True)
        vcpu, run = guest.vcpu, guest.vcpu.run_struct
        assert _run_to_exit(vcpu) == S.KVM_EXIT_IO  # the first exit is the LSR read...
        assert (run.io.port, run.io.direction) == (0x3FD, S.KVM_EXIT_IO_IN)
        assert batch.take() == [(0, ord("h")), (0, ord("i"))]  # ...both writes wait in the ring
        assert batch.take() == []
        assert _run_to_exit(vcpu) == S.KVM_EXIT_HLT
    finally:
        ring.close()
        guest.close()
