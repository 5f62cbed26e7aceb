"""virtio-net: one device per configured network interface, each on a host TAP opened by name.

The TAP is opened in the VMM's own network namespace (the process's, as Firecracker's
jailer arranges it) and closed when the VM is released. The devices are planned after
the drives, so adding an interface never moves a drive's virtio window (the guest's
/dev/vdX names stay put); the guest names the interfaces eth0, eth1, ... in config order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from firelet.builder.spec import VIRTIO_MMIO, BuildInputs, DeviceSpec, Wiring
from firelet.config.model import NetworkInterface
from firelet.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover - the device package is imported only when a VM has a NIC
    from firelet.devices.virtio.net import NetInterface, Tap


def _plan(inputs: BuildInputs) -> list[tuple[str, NetworkInterface]]:
    return [(iface.iface_id, iface) for iface in inputs.config.network_interfaces]


def _make(iface: NetworkInterface, wiring: Wiring) -> NetInterface:
    from firelet.devices.rate_limiter import RateLimiter
    from firelet.devices.virtio.net import Net, NetError, Tap

    try:  # refused when missing, in use or not a TAP (TUNSETIFF would make a new, unconnected one)
        tap = Tap.open(iface.host_dev_name)
    except NetError as exc:
        raise UsageError(f"network interface {iface.iface_id}: {exc}") from None
    try:
        device: NetInterface
        if iface.vhost:
            device = _vhost_device(iface, tap, wiring)
        else:
            device = Net(iface.iface_id, tap, wiring.loop, guest_mac=iface.mac_bytes,
                         rx_limiter=RateLimiter.from_config(rx) if (rx := iface.rx_rate_limiter) else None,
                         tx_limiter=RateLimiter.from_config(tx) if (tx := iface.tx_rate_limiter) else None)
    except BaseException:
        tap.close()
        raise
    wiring.on_close(device.close)
    return device


def _vhost_device(iface: NetworkInterface, tap: Tap, wiring: Wiring) -> NetInterface:
    from firelet.devices.virtio.net import NetError
    from firelet.devices.virtio.net.vhost import Vhost, VhostNet

    try:
        vhost = Vhost.open()
    except NetError as exc:
        raise UsageError(f"network interface {iface.iface_id}: {exc}") from None
    try:
        return VhostNet(iface.iface_id, tap, vhost, wiring.loop, guest_mac=iface.mac_bytes)
    except BaseException:
        vhost.close()
        raise


NET_KIND = DeviceSpec(kind="net", plan=_plan, placement=VIRTIO_MMIO, make=_make)
