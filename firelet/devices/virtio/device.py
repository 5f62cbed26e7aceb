"""What every virtio device offers its transport, and shared bookkeeping.

A device knows its type, queues, features and config space; it knows nothing
of MMIO registers or KVM. The transport negotiates features, lets the driver
set the queues up, and on DRIVER_OK calls :meth:`VirtioDevice.activate` with the
guest memory, the queues and an :class:`InterruptSignal`; afterwards it calls
:meth:`VirtioDevice.process_queue` whenever the driver notifies a queue.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Protocol

from firelet.devices.virtio.queue import Queue
from firelet.memory.guest import GuestMemory

# §6 Reserved feature bits.
VIRTIO_F_VERSION_1 = 32

# §5 Device types.
TYPE_NET = 1
TYPE_BLOCK = 2
TYPE_CONSOLE = 3
TYPE_RNG = 4
TYPE_BALLOON = 5
TYPE_VSOCK = 19


class InterruptSignal(Protocol):
    """How a device tells the driver about used buffers and config changes."""

    def signal_used_queue(self) -> None:
        """Set the "used buffer" interrupt status bit and raise the line."""

    def signal_config_change(self) -> None:
        """Set the "configuration change" status bit, bump the generation, raise the line."""


class VirtioDevice(Protocol):
    device_type: int
    queue_max_sizes: tuple[int, ...]
    avail_features: int
    acked_features: int

    def read_config(self, offset: int, data: memoryview) -> None: ...

    def write_config(self, offset: int, data: bytes | memoryview) -> None: ...

    def activate(self, mem: GuestMemory, queues: Sequence[Queue], interrupt: InterruptSignal) -> None: ...

    def process_queue(self, index: int) -> None: ...

    def reset(self) -> None: ...

    @property
    def activated(self) -> bool: ...


class VirtioDeviceBase(abc.ABC):
    """Bookkeeping shared by devices: features, activation state, a byte config space.

    Subclasses set ``device_type`` and ``queue_max_sizes``, pass their feature
    bits to ``__init__``, implement :meth:`config_space` (the bytes the driver
    reads) and :meth:`process_queue`, and may extend :meth:`activate`/:meth:`reset`.
    """

    device_type: int = 0
    queue_max_sizes: tuple[int, ...] = ()

    def __init__(self, avail_features: int) -> None:
        self.avail_features = avail_features | (1 << VIRTIO_F_VERSION_1)
        self.acked_features = 0
        self.mem: GuestMemory | None = None
        self.queues: Sequence[Queue] = ()
        self.interrupt: InterruptSignal | None = None

    @property
    def activated(self) -> bool:
        return self.mem is not None

    def has_feature(self, bit: int) -> bool:
        """Whether the driver accepted feature ``bit``."""
        return bool(self.acked_features >> bit & 1)

    def config_space(self) -> bytes:
        return b""

    def read_config(self, offset: int, data: memoryview) -> None:
        """Copy config bytes; reads past the end return zeros."""
        space = self.config_space()
        chunk = space[offset : offset + len(data)] if 0 <= offset < len(space) else b""
        data[: len(chunk)] = chunk
        data[len(chunk) :] = bytes(len(data) - len(chunk))

    def write_config(self, offset: int, data: bytes | memoryview) -> None:  # noqa: B027 - a no-op default on purpose
        """Config space is read-only unless a device says otherwise."""

    def activate(self, mem: GuestMemory, queues: Sequence[Queue], interrupt: InterruptSignal) -> None:
        self.mem = mem
        self.queues = queues
        self.interrupt = interrupt

    @abc.abstractmethod
    def process_queue(self, index: int) -> None:
        """Serve the requests the driver made available on queue ``index``."""

    def reset(self) -> None:
        """Forget the driver: the transport resets the queues themselves."""
        self.mem = None
        self.queues = ()
        self.interrupt = None
        self.acked_features = 0
