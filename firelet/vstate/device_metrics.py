"""The one walk over a VM's devices that folds their own counters into the VM's metrics.

Devices count in their own objects (a block device's ``BlockMetrics``, the UART's
byte counters) on their own threads; Firecracker's metrics lines sum them per
kind. The builder registers this walk as a source of the VM's
:class:`firelet.metrics.Metrics`, so every line written (periodic or on demand)
and every look at ``MicroVM.metrics`` carries current values.
"""

from __future__ import annotations

from firelet.devices.legacy.serial import Serial
from firelet.devices.virtio.block import Block
from firelet.devices.virtio.net import NetInterface
from firelet.devices.virtio.net.metrics import NET_COUNTERS
from firelet.metrics import Metrics
from firelet.vstate.device_registry import DeviceRegistry


def fold_device_metrics(devices: DeviceRegistry, metrics: Metrics) -> None:
    """Set the VM's device groups to the totals its devices keep (cumulative values, not increments)."""
    blocks = [device.metrics for device in devices.of_kind(Block)]
    block = metrics.block
    block.read_bytes = sum(m.read_bytes for m in blocks)
    block.write_bytes = sum(m.write_bytes for m in blocks)
    block.read_count = sum(m.read_ops for m in blocks)
    block.write_count = sum(m.write_ops for m in blocks)
    block.flush_count = sum(m.flush_ops for m in blocks)
    block.invalid_reqs_count = sum(m.failures + m.dropped for m in blocks)
    block.rate_limiter_throttled_events = sum(m.rate_limiter_throttled_events for m in blocks)
    block.rate_limiter_event_count = sum(m.rate_limiter_event_count for m in blocks)
    _fold_net(devices.of_kind(NetInterface), metrics)  # type: ignore[type-abstract]  # either data path
    serial = devices.get(Serial)
    if serial is not None:
        metrics.uart.write_count = serial.tx_bytes
        metrics.uart.read_count = serial.rx_bytes
        metrics.uart.missed_write_count = serial.tx_dropped


def _fold_net(nets: list[NetInterface], metrics: Metrics) -> None:
    """``net`` is the sum over interfaces, ``net_<iface_id>`` each one's own (as Firecracker writes them)."""
    totals = dict.fromkeys(NET_COUNTERS, 0)
    for net in nets:
        own = net.metrics.as_dict()
        area = metrics.area(f"net_{net.iface_id}")
        for name, value in own.items():
            setattr(area, name, value)
            totals[name] += value
    for name, value in totals.items():
        setattr(metrics.net, name, value)
