"""virtio-net: the device (:mod:`.device`), its TAP (:mod:`.tap`), frame checks (:mod:`.frames`)."""

from firelet.devices.virtio.net.device import Net
from firelet.devices.virtio.net.interface import NetInterface, NetState
from firelet.devices.virtio.net.metrics import NetMetrics
from firelet.devices.virtio.net.tap import NetError, Tap

__all__ = ["Net", "NetError", "NetInterface", "NetMetrics", "NetState", "Tap"]
