"""The x86-64 guest-physical memory map: every fixed guest address lives here.

Nothing else in firelet hard-codes a guest address. Low-memory placements follow
the Linux x86 boot protocol (Documentation/arch/x86/boot.rst) and the layout
Firecracker uses, so the same guest kernels boot the same way.
"""

from __future__ import annotations

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

# -- Low memory (below 1 MiB), used for boot structures --------------------
#: Global descriptor table for the 64-bit boot (four 8-byte entries).
BOOT_GDT_START = 0x500
#: An empty IDT, loaded so that a fault before Linux sets its own triple-faults cleanly.
BOOT_IDT_START = 0x520
#: PVH ``hvm_start_info`` (xen/include/public/arch-x86/hvm/start_info.h).
PVH_INFO_START = 0x6000
#: PVH memory map entries follow the start_info structure.
PVH_MEMMAP_START = 0x6040
#: PVH module list (``hvm_modlist_entry``, 32 bytes each; the initrd is module 0),
#: after room for 146 memory map entries of 24 bytes.
PVH_MODLIST_START = 0x6E00
#: The "zero page": ``struct boot_params`` (boot protocol, "The zero page").
ZERO_PAGE_START = 0x7000
#: Initial stack pointer for the boot CPU (grows down, below the page tables).
BOOT_STACK_POINTER = 0x8FF0
#: Identity-mapping page tables for the 64-bit entry: PML4, PDPT, PD (1 GiB of 2 MiB pages).
PML4_START = 0x9000
PDPTE_START = 0xA000
PDE_START = 0xB000
#: Kernel command line (boot protocol: must lie below 0xA0000 for old loaders;
#: we keep it low and give it room for Firecracker-sized command lines).
CMDLINE_START = 0x20000
CMDLINE_MAX_SIZE = 4096
#: MP floating pointer + MP configuration table (Intel MP spec 1.4 §4), in the EBDA.
MPTABLE_START = 0x9FC00
#: Start of the EBDA / end of usable low RAM in the e820 map.
EBDA_START = 0x9FC00
#: Legacy video/BIOS hole: 640 KiB .. 1 MiB is not RAM.
LEGACY_HOLE_END = 0x100000
#: Where the protected-mode kernel is loaded (boot protocol: "code32_start").
HIMEM_START = 0x100000

# -- The 32-bit hole below 4 GiB --------------------------------------------
#: Start of the MMIO gap below 4 GiB; RAM above this moves to 4 GiB.
MMIO_GAP_START = 4 * GiB - 768 * MiB
MMIO_GAP_END = 4 * GiB
MMIO_GAP_SIZE = MMIO_GAP_END - MMIO_GAP_START

#: The I/O APIC and local APIC register windows, at their architectural default
#: addresses (Intel MP spec 1.4 §3.6.1, SDM vol. 3 §11.4.1), inside the gap.
IOAPIC_START = 0xFEC00000
APIC_START = 0xFEE00000

#: MMIO devices: one 4 KiB window each, from the start of the gap. With Firecracker's
#: ``--boot-timer`` its boot timer takes the first window (where Firecracker's docs and
#: guests expect it) and the virtio devices the ones after it.
VIRTIO_MMIO_START = MMIO_GAP_START
VIRTIO_MMIO_SIZE = 0x1000
BOOT_TIMER_START = MMIO_GAP_START
#: Legacy IRQs 0-4 are taken (PIT, keyboard, cascade, COM2, COM1); virtio uses 5..23.
IRQ_BASE = 5
IRQ_MAX = 23


def virtio_mmio_cmdline(base: int, irq: int) -> str:
    """How Linux learns of a virtio-mmio window without a device tree (the virtio_mmio
    driver's ``device=<size>@<base>:<irq>`` parameter, drivers/virtio/virtio_mmio.c)."""
    return f"virtio_mmio.device={VIRTIO_MMIO_SIZE // 1024}K@{base:#x}:{irq}"

#: KVM needs three pages for the TSS and one for the identity map (KVM_SET_TSS_ADDR,
#: KVM_SET_IDENTITY_MAP_ADDR), inside the gap where no RAM lives.
KVM_IDENTITY_MAP_START = 0xFFFBC000
KVM_TSS_START = 0xFFFBD000

#: Upper bound on guest RAM we accept (a sanity limit, well under the 46-bit space).
MAX_MEM_SIZE = 256 * GiB


def ram_regions(mem_size: int) -> list[tuple[int, int]]:
    """Guest RAM as ``[(guest_addr, size)]``, splitting around the MMIO gap."""
    if mem_size <= MMIO_GAP_START:
        return [(0, mem_size)]
    return [(0, MMIO_GAP_START), (MMIO_GAP_END, mem_size - MMIO_GAP_START)]
