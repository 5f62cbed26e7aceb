"""What every virtio-net device is, whichever data path moves its frames.

An interface has an id, a TAP, a MAC in its config space (virtio 1.2 §5.1.4),
Firecracker's counters and a state record. The userspace path (:mod:`.device`)
and the kernel's vhost-net (:mod:`.vhost`) differ only in who moves the frames.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import ClassVar

from firelet.devices.protocols import Readiness
from firelet.devices.rate_limiter import LimiterConfig
from firelet.devices.virtio.device import TYPE_NET, VirtioDeviceBase
from firelet.devices.virtio.net.frames import (
    VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO,
    VIRTIO_NET_F_MAC,
    VNET_HDR_LEN,
)
from firelet.devices.virtio.net.metrics import NetMetrics
from firelet.devices.virtio.net.tap import TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_UFO, Tap
from firelet.log import get_logger
from firelet.records import RecordError

log = get_logger(__name__)

RX_QUEUE = 0
TX_QUEUE = 1
QUEUE_SIZE = 256
MAC_LEN = 6
#: Offloads the TAP may use toward the guest, by the feature that lets the driver take them.
_OFFLOADS = ((VIRTIO_NET_F_GUEST_TSO4, TUN_F_TSO4), (VIRTIO_NET_F_GUEST_TSO6, TUN_F_TSO6),
             (VIRTIO_NET_F_GUEST_UFO, TUN_F_UFO))


def tap_offload(acked_features: int) -> int:
    """The TUN_F_* offloads the TAP may hand the driver, given the features it accepted."""
    if not acked_features >> VIRTIO_NET_F_GUEST_CSUM & 1:
        return 0  # segmentation offloads need the checksum one (linux/if_tun.h)
    offload = TUN_F_CSUM
    for feature, flag in _OFFLOADS:
        if acked_features >> feature & 1:
            offload |= flag
    return offload


@dataclasses.dataclass(frozen=True)
class NetState:
    """What an interface decided and the driver accepted; its queues are in the transport's state.

    ``mac`` is the config space's (the driver may have written it); the TAP is opened
    again by the restorer (``host_dev_name`` says which one was used, it may differ).
    A frame read but not yet delivered is not kept: the network may lose a frame.
    """

    VERSION: ClassVar[int] = 1

    iface_id: str
    host_dev_name: str
    mac: bytes
    has_mac: bool
    acked_features: int


class NetInterface(VirtioDeviceBase):
    """A virtio network device on ``tap``: config space, counters, TAP set-up and state."""

    device_type = TYPE_NET
    queue_max_sizes: tuple[int, ...] = (QUEUE_SIZE, QUEUE_SIZE)

    def __init__(self, iface_id: str, tap: Tap, loop: Readiness, features: int, guest_mac: bytes | None) -> None:
        if guest_mac is not None and len(guest_mac) != MAC_LEN:
            raise ValueError(f"guest_mac must be {MAC_LEN} bytes, got {len(guest_mac)}")
        super().__init__(features | (1 << VIRTIO_NET_F_MAC if guest_mac is not None else 0))
        self.iface_id = iface_id
        self.tap = tap
        self._loop = loop
        self.metrics = NetMetrics()
        self.mac = bytearray(guest_mac if guest_mac is not None else bytes(MAC_LEN))

    def config_space(self) -> bytes:
        """§5.1.4: mac (the only field we offer a feature for)."""
        return bytes(self.mac)

    def write_config(self, offset: int, data: bytes | memoryview) -> None:
        """A legacy driver may write the MAC; anything else is refused (counted)."""
        if self.has_feature(VIRTIO_NET_F_MAC) or not 0 <= offset <= offset + len(data) <= MAC_LEN:
            self.metrics.cfg_fails += 1
            return
        self.mac[offset : offset + len(data)] = data
        self.metrics.mac_address_updates += 1

    def prepare_tap(self) -> bool:
        """Header size and offloads of the TAP for the accepted features; False (counted) if it refused."""
        try:
            self.tap.set_vnet_hdr_size(VNET_HDR_LEN)
            self.tap.set_offload(tap_offload(self.acked_features))
        except OSError as exc:
            self.metrics.activate_fails += 1
            log.warning("virtio-net %s: cannot set up TAP %s: %s", self.iface_id, self.tap.name, exc.strerror)
            return False
        return True

    def save_state(self) -> NetState:
        return NetState(self.iface_id, self.tap.name, bytes(self.mac),
                        bool(self.avail_features >> VIRTIO_NET_F_MAC & 1), self.acked_features)

    def check_state(self, state: NetState) -> None:
        """RecordError unless ``state`` was saved by an interface configured as this one."""
        if state.iface_id != self.iface_id:
            raise RecordError(f"saved network interface {state.iface_id!r} is not {self.iface_id!r}")
        if len(state.mac) != MAC_LEN:
            raise RecordError(f"saved MAC of interface {state.iface_id!r} is {len(state.mac)} bytes, not {MAC_LEN}")
        if state.has_mac != bool(self.avail_features >> VIRTIO_NET_F_MAC & 1):
            raise RecordError(f"interface {self.iface_id!r} was saved {'with' if state.has_mac else 'without'} a "
                              "guest_mac; configure it the same way to restore it")
        if state.acked_features & ~self.avail_features:
            raise RecordError(f"saved interface features {state.acked_features:#x} were never offered "
                              f"({self.avail_features:#x})")

    def update_rate_limiters(self, rx: LimiterConfig | None, tx: LimiterConfig | None) -> None:
        """PATCH of the buckets; a data path without limiters refuses it (ValueError, nothing changed)."""
        raise ValueError(f"network interface {self.iface_id} has no rate limiters on this data path")

    @abc.abstractmethod
    def close(self) -> None:
        """Stop moving frames and close the TAP (idempotent); the VM is being released."""

    def _on_loop(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` now if this thread may touch the loop (its own, or none running), else hand it over."""
        try:
            fn()
        except RuntimeError:  # EventLoop refuses registrations from other threads before changing anything
            self._loop.call_soon(fn)
