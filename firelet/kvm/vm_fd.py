"""A KVM virtual machine fd: guest memory slots, in-kernel irqchip/PIT, eventfds, vCPUs."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable

from firelet.kvm import ioctls as K
from firelet.kvm import structs as S
from firelet.kvm._base import ioctl
from firelet.kvm.vcpu_fd import VcpuFd

_IOEVENTFD_LENGTHS = (0, 1, 2, 4, 8)  # linux/kvm.h: "1, 2, 4, or 8 bytes; or 0 to ignore length"


def dirty_bitmap_size(memory_size: int, page_size: int = 4096) -> int:
    """Bytes of KVM_GET_DIRTY_LOG bitmap for a slot: one bit per page, in whole u64 words."""
    pages = (memory_size + page_size - 1) // page_size
    return (pages + 63) // 64 * 8


class VmFd:
    """One VM; methods are the VM ioctls, named after them, with no policy."""

    def __init__(self, fd: int, vcpu_mmap_size: int) -> None:
        self.fd = fd
        self.vcpu_mmap_size = vcpu_mmap_size

    # --- memory ---
    def set_user_memory_region(
        self, slot: int, guest_addr: int, size: int, host_addr: int, flags: int = 0
    ) -> None:
        """Map ``size`` bytes of host memory at ``host_addr`` into the guest; size 0 deletes the slot."""
        region = S.kvm_userspace_memory_region(
            slot=slot, flags=flags, guest_phys_addr=guest_addr, memory_size=size, userspace_addr=host_addr
        )
        ioctl(self.fd, K.KVM_SET_USER_MEMORY_REGION, region)

    def get_dirty_log(self, slot: int, bitmap_size: int) -> bytearray:
        """KVM_GET_DIRTY_LOG: a bitmap of ``bitmap_size`` bytes (see :func:`dirty_bitmap_size`).

        The slot must have been registered with ``KVM_MEM_LOG_DIRTY_PAGES``;
        the kernel writes whole u64 words, so the buffer is rounded up to 8.
        """
        words = (ctypes.c_uint64 * ((bitmap_size + 7) // 8))()
        log = S.kvm_dirty_log(slot=slot, dirty_bitmap=ctypes.addressof(words))
        ioctl(self.fd, K.KVM_GET_DIRTY_LOG, log)
        return bytearray(memoryview(words).cast("B")[:bitmap_size])

    # --- x86 platform setup ---
    def set_tss_addr(self, addr: int) -> None:
        """KVM_SET_TSS_ADDR: three pages of guest-physical space KVM needs on Intel (not RAM)."""
        ioctl(self.fd, K.KVM_SET_TSS_ADDR, addr)

    def set_identity_map_addr(self, addr: int) -> None:
        """KVM_SET_IDENTITY_MAP_ADDR: one page for the real-mode identity map on Intel."""
        ioctl(self.fd, K.KVM_SET_IDENTITY_MAP_ADDR, ctypes.c_uint64(addr))

    def create_irqchip(self) -> None:
        """KVM_CREATE_IRQCHIP: in-kernel PIC pair, IOAPIC and per-vCPU LAPICs (before vCPUs)."""
        ioctl(self.fd, K.KVM_CREATE_IRQCHIP)

    def create_pit2(self, flags: int = S.KVM_PIT_SPEAKER_DUMMY) -> None:
        """KVM_CREATE_PIT2: in-kernel i8254; the dummy speaker makes port 0x61 reads work."""
        ioctl(self.fd, K.KVM_CREATE_PIT2, S.kvm_pit_config(flags=flags))

    def enable_cap(self, cap: int, *args: int, flags: int = 0) -> None:
        """KVM_ENABLE_CAP on the VM (e.g. KVM_CAP_SPLIT_IRQCHIP, KVM_CAP_X2APIC_API)."""
        enable = S.kvm_enable_cap(cap=cap, flags=flags)
        for i, value in enumerate(args):
            enable.args[i] = value
        ioctl(self.fd, K.KVM_ENABLE_CAP, enable)

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION asked of this VM (some answers differ per VM)."""
        return ioctl(self.fd, K.KVM_CHECK_EXTENSION, cap)

    # --- interrupts ---
    def register_irqfd(self, eventfd: int, gsi: int, resamplefd: int | None = None) -> None:
        """KVM_IRQFD: a write to ``eventfd`` raises ``gsi`` without leaving the kernel."""
        irqfd = S.kvm_irqfd(fd=eventfd, gsi=gsi)
        if resamplefd is not None:
            irqfd.flags = S.KVM_IRQFD_FLAG_RESAMPLE
            irqfd.resamplefd = resamplefd
        ioctl(self.fd, K.KVM_IRQFD, irqfd)

    def unregister_irqfd(self, eventfd: int, gsi: int) -> None:
        ioctl(self.fd, K.KVM_IRQFD, S.kvm_irqfd(fd=eventfd, gsi=gsi, flags=S.KVM_IRQFD_FLAG_DEASSIGN))

    def irq_line(self, irq: int, level: int) -> None:
        """KVM_IRQ_LINE: set a GSI's level (1 asserted, 0 deasserted)."""
        ioctl(self.fd, K.KVM_IRQ_LINE, S.kvm_irq_level(irq=irq, level=level))

    def signal_msi(self, address: int, data: int) -> int:
        """KVM_SIGNAL_MSI: >0 delivered, 0 blocked by the guest."""
        msi = S.kvm_msi(address_lo=address & 0xFFFFFFFF, address_hi=address >> 32, data=data)
        return ioctl(self.fd, K.KVM_SIGNAL_MSI, msi)

    def set_gsi_routing(self, entries: Iterable[S.kvm_irq_routing_entry]) -> None:
        """KVM_SET_GSI_ROUTING: replace the whole GSI routing table."""
        ioctl(self.fd, K.KVM_SET_GSI_ROUTING, S.make_kvm_irq_routing(entries))

    # --- ioeventfds ---
    def register_ioeventfd(
        self, eventfd: int, addr: int, length: int, datamatch: int | None = None, pio: bool = False
    ) -> None:
        """KVM_IOEVENTFD: a guest write of ``length`` bytes at ``addr`` signals ``eventfd``.

        With ``datamatch`` only writes of that value signal; ``pio`` selects port I/O.
        """
        ioctl(self.fd, K.KVM_IOEVENTFD, _ioeventfd(eventfd, addr, length, datamatch, pio, 0))

    def unregister_ioeventfd(
        self, eventfd: int, addr: int, length: int, datamatch: int | None = None, pio: bool = False
    ) -> None:
        """Undo :meth:`register_ioeventfd`; the arguments must match the registration."""
        flags = S.KVM_IOEVENTFD_FLAG_DEASSIGN
        ioctl(self.fd, K.KVM_IOEVENTFD, _ioeventfd(eventfd, addr, length, datamatch, pio, flags))

    # --- coalesced I/O ---
    def register_coalesced_io(self, addr: int, size: int, *, pio: bool) -> None:
        """KVM_REGISTER_COALESCED_MMIO: guest writes in the range go to the ring instead of exiting."""
        ioctl(self.fd, K.KVM_REGISTER_COALESCED_MMIO, S.kvm_coalesced_mmio_zone(addr, size, int(pio)))

    def unregister_coalesced_io(self, addr: int, size: int, *, pio: bool) -> None:
        """Undo :meth:`register_coalesced_io` (the same range)."""
        ioctl(self.fd, K.KVM_UNREGISTER_COALESCED_MMIO, S.kvm_coalesced_mmio_zone(addr, size, int(pio)))

    # --- device state (snapshots) ---
    def get_irqchip(self, chip_id: int) -> S.kvm_irqchip:
        """KVM_GET_IRQCHIP for KVM_IRQCHIP_PIC_MASTER, _PIC_SLAVE or _IOAPIC."""
        chip = S.kvm_irqchip(chip_id=chip_id)
        ioctl(self.fd, K.KVM_GET_IRQCHIP, chip)
        return chip

    def set_irqchip(self, chip: S.kvm_irqchip) -> None:
        ioctl(self.fd, K.KVM_SET_IRQCHIP, chip)

    def get_pit2(self) -> S.kvm_pit_state2:
        state = S.kvm_pit_state2()
        ioctl(self.fd, K.KVM_GET_PIT2, state)
        return state

    def set_pit2(self, state: S.kvm_pit_state2) -> None:
        ioctl(self.fd, K.KVM_SET_PIT2, state)

    def get_clock(self) -> S.kvm_clock_data:
        """KVM_GET_CLOCK: the guest's kvmclock in ns (``flags`` says which fields are valid)."""
        clock = S.kvm_clock_data()
        ioctl(self.fd, K.KVM_GET_CLOCK, clock)
        return clock

    def set_clock(self, clock: S.kvm_clock_data) -> None:
        ioctl(self.fd, K.KVM_SET_CLOCK, clock)

    # --- vCPUs ---
    def create_vcpu(self, index: int) -> VcpuFd:
        """KVM_CREATE_VCPU with APIC ID ``index``; its ``kvm_run`` area is mapped at once."""
        fd = ioctl(self.fd, K.KVM_CREATE_VCPU, index)
        try:
            return VcpuFd(fd, self.vcpu_mmap_size)
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> VmFd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ioeventfd(
    eventfd: int, addr: int, length: int, datamatch: int | None, pio: bool, flags: int
) -> S.kvm_ioeventfd:
    if length not in _IOEVENTFD_LENGTHS:
        raise ValueError(f"ioeventfd length must be one of {_IOEVENTFD_LENGTHS}, not {length}")
    req = S.kvm_ioeventfd(addr=addr, len=length, fd=eventfd, flags=flags)
    if datamatch is not None:
        req.datamatch = datamatch
        req.flags |= S.KVM_IOEVENTFD_FLAG_DATAMATCH
    if pio:
        req.flags |= S.KVM_IOEVENTFD_FLAG_PIO
    return req
