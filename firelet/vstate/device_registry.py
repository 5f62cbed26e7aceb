"""The devices of a running VM, looked up by their class and id: no string keys.

The builder adds one :class:`DeviceEntry` per device it makes (its kind, id, place
on a bus and IRQ, and for a virtio device the transport in front of it); the
controller finds a drive with ``devices.get(Block, "rootfs")``, folds metrics over
``devices.of_kind(Block)``, and a snapshot walks every entry in order.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:  # pragma: no cover
    from firelet.devices.virtio.mmio import MmioTransport

D = TypeVar("D")


class BusKind(enum.Enum):
    PIO = "pio"
    MMIO = "mmio"


@dataclass(frozen=True)
class Slot:
    """Where a device sits: its ``(base, length)`` ranges on one bus, and its IRQ (GSI) if it has one."""

    bus: BusKind
    ranges: tuple[tuple[int, int], ...]
    irq: int | None = None

    @property
    def base(self) -> int:
        return self.ranges[0][0]


@dataclass(frozen=True)
class DeviceEntry:
    """One device of the VM; ``device_id`` is the config's id (a drive's ``drive_id``), or the
    kind's name for a device a VM has at most one of."""

    kind: str
    device_id: str
    device: object
    slot: Slot
    #: A virtio device's virtio-mmio transport (what sits on the bus); None for the others.
    transport: MmioTransport | None = None


class DeviceRegistry:
    """The VM's devices in the order they were made (that order is kept for snapshots)."""

    def __init__(self) -> None:
        self._entries: list[DeviceEntry] = []

    def add(self, entry: DeviceEntry) -> None:
        if self.entry(entry.kind, entry.device_id) is not None:
            raise ValueError(f"two {entry.kind} devices with id {entry.device_id!r}")
        self._entries.append(entry)

    def entry(self, kind: str, device_id: str) -> DeviceEntry | None:
        """The entry of the ``kind`` device with ``device_id``."""
        return next((e for e in self._entries if e.kind == kind and e.device_id == device_id), None)

    def get(self, cls: type[D], device_id: str | None = None) -> D | None:
        """The device of class ``cls`` with ``device_id``; without an id, the only one (None if there is none)."""
        found = [e.device for e in self._entries
                 if isinstance(e.device, cls) and (device_id is None or e.device_id == device_id)]
        if len(found) > 1:
            raise LookupError(f"{len(found)} {cls.__name__} devices: say which by id")
        return found[0] if found else None

    def of_kind(self, cls: type[D]) -> list[D]:
        """Every device of class ``cls``, in the order they were made."""
        return [e.device for e in self._entries if isinstance(e.device, cls)]

    def __iter__(self) -> Iterator[DeviceEntry]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)
