"""One interface's counters, with Firecracker's ``net`` metric names (docs/metrics.md).

The device bumps them on the loop's thread; ``firelet.vstate.device_metrics``
folds them into the VM's ``net`` group (the sum) and ``net_<iface_id>``.
"""

from __future__ import annotations

#: The counters, in the order Firecracker's NetDeviceMetrics lists them.
NET_COUNTERS = (
    "activate_fails", "cfg_fails", "mac_address_updates", "no_rx_avail_buffer", "no_tx_avail_buffer",
    "event_fails", "rx_queue_event_count", "rx_event_rate_limiter_count", "rx_partial_writes",
    "rx_rate_limiter_throttled", "rx_tap_event_count", "rx_bytes_count", "rx_packets_count", "rx_fails",
    "rx_count", "tap_read_fails", "tap_write_fails", "tx_bytes_count", "tx_malformed_frames", "tx_fails",
    "tx_count", "tx_packets_count", "tx_partial_reads", "tx_queue_event_count", "tx_rate_limiter_event_count",
    "tx_rate_limiter_throttled", "tx_spoofed_mac_count",
)


class NetMetrics:
    """Cumulative counters of one virtio-net device (plain ints: one writer, the loop)."""

    def __init__(self) -> None:
        self.activate_fails = 0
        self.cfg_fails = 0
        self.mac_address_updates = 0
        self.no_rx_avail_buffer = 0
        self.no_tx_avail_buffer = 0
        self.event_fails = 0
        self.rx_queue_event_count = 0
        self.rx_event_rate_limiter_count = 0
        self.rx_partial_writes = 0
        self.rx_rate_limiter_throttled = 0
        self.rx_tap_event_count = 0
        self.rx_bytes_count = 0
        self.rx_packets_count = 0
        self.rx_fails = 0
        self.rx_count = 0
        self.tap_read_fails = 0
        self.tap_write_fails = 0
        self.tx_bytes_count = 0
        self.tx_malformed_frames = 0
        self.tx_fails = 0
        self.tx_count = 0
        self.tx_packets_count = 0
        self.tx_partial_reads = 0
        self.tx_queue_event_count = 0
        self.tx_rate_limiter_event_count = 0
        self.tx_rate_limiter_throttled = 0
        self.tx_spoofed_mac_count = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in NET_COUNTERS}
