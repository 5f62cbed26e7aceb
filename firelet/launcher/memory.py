"""How many more microVMs the host's memory holds: ``fleet up --memory-check``.

A guest's RAM is mapped whole at start but only backed as the guest touches it, so a
host runs far more idle microVMs than their sizes add up to: oversubscription, on by
default as with Firecracker. Should the guests then use their memory, the kernel's OOM
killer ends some VMM. Where that must not happen, the check counts every member at its
full guest size (what a running member has not touched yet is still owed to it) and
refuses, by id and before launching it, a member that would not fit; the rest go on.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

#: What one firelet-vmm costs beside its guest's RAM (MiB): a warm child's private memory is
#: 3.9 MiB with its API up (docs/benchmarks.md, "Warm launcher vs cold exec"); a running VM
#: adds vCPU threads, KVM's structures and device buffers. Rounded up, not measured.
VMM_OVERHEAD_MIB = 16
#: Memory the fleet leaves to the host's own processes (MiB).
HOST_RESERVE_MIB = 256

_MEMINFO = "/proc/meminfo"


def available_mib(meminfo: str = _MEMINFO) -> int:
    """The kernel's estimate of memory available without swapping (proc(5), MemAvailable)."""
    with open(meminfo) as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    raise OSError(f"{meminfo} has no MemAvailable line")


def guest_mib(config: dict[str, Any]) -> int:
    """A Firecracker config's guest RAM (MiB); 0 when it has none (firelet-vmm refuses that config)."""
    machine = config.get("machine-config")
    size = machine.get("mem_size_mib") if isinstance(machine, dict) else None
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else 0


@dataclass
class MemoryBudget:
    """What is left for new members: available memory, less the reserve and what running members may still claim."""

    available_mib: int
    owed_mib: int = 0

    @classmethod
    def measure(cls, running: Iterable[tuple[int, int]], available: int | None = None) -> MemoryBudget:
        """``running``: each running member's (guest MiB, resident KiB)."""
        owed = sum(max(0, guest + VMM_OVERHEAD_MIB - rss_kib // 1024) for guest, rss_kib in running)
        return cls(available_mib() if available is None else available, owed)

    @property
    def left_mib(self) -> int:
        return self.available_mib - HOST_RESERVE_MIB - self.owed_mib

    def admit(self, vm_id: str, guest: int) -> str | None:
        """Take one member's share, or say in one line why it does not fit."""
        cost = guest + VMM_OVERHEAD_MIB
        if cost > self.left_mib:
            return (f"{vm_id}: not launched: its {guest} MiB guest and VMM ({cost} MiB) exceed the memory left for the "
                    f"fleet ({max(0, self.left_mib)} MiB of {self.available_mib} MiB available, {HOST_RESERVE_MIB} MiB "
                    "kept for the host); stop members, launch fewer or smaller ones, or leave out --memory-check")
        self.owed_mib += cost
        return None
