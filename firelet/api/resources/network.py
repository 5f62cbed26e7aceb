"""``/network-interfaces/{id}``: virtio-net devices (PUT pre-boot, PATCH post-boot).

As Firecracker, the TAP is opened when the PUT names it, so a TAP that does not
exist, is busy or cannot be opened is refused at the PUT itself (firelet then
closes it again and the VMM reopens it at ``InstanceStart``, as a drive's file
is). A PATCH replaces rate limiter buckets on the running device.
"""

from __future__ import annotations

import msgspec

from firelet.api.context import ApiContext, not_supported
from firelet.api.routing import Fault, RouteTable, no_content, replace_by, same_id
from firelet.api.server import Request, Response
from firelet.config import model as cfg
from firelet.config import requests as bodies
from firelet.controller.interface import tap_problem, vhost_problem

routes = RouteTable()
#: Firecracker's prefix for every refusal of this endpoint (its ``VmmActionError::NetworkConfig``).
NETWORK_ERROR = "Network config error"


@routes.route("PUT", "/network-interfaces/{id}", "network")
def put_network_interface(api: ApiContext, req: Request, iface_id: str) -> Response:
    iface = api.body(req, cfg.NetworkInterface)
    api.preboot()
    same_id(iface_id, iface.iface_id)
    if iface.mtu is not None:
        raise not_supported("advertising an MTU to the guest (network interface mtu) is")
    others = [n for n in api.config.network_interfaces if n.iface_id != iface_id]
    if iface.guest_mac is not None and any(n.guest_mac == iface.guest_mac for n in others):
        raise Fault(f"{NETWORK_ERROR}: The MAC address is already in use: {iface.guest_mac}.")
    holder = next((n.iface_id for n in others if n.host_dev_name == iface.host_dev_name), None)
    if holder is not None:
        raise Fault(f"{NETWORK_ERROR}: Could not create the network device: the TAP {iface.host_dev_name} "
                    f"is already used by network interface {holder}.")
    problem = tap_problem(iface.host_dev_name) or (vhost_problem() if iface.vhost else None)
    if problem:
        raise Fault(f"{NETWORK_ERROR}: Could not create the network device: {problem}.")
    iface = msgspec.structs.replace(iface, rx_rate_limiter=patched_limiter(None, iface.rx_rate_limiter),
                                    tx_rate_limiter=patched_limiter(None, iface.tx_rate_limiter))
    api.update(network_interfaces=replace_by(api.config.network_interfaces, iface, "iface_id"))
    return no_content()


@routes.route("PATCH", "/network-interfaces/{id}", "network")
def patch_network_interface(api: ApiContext, req: Request, iface_id: str) -> Response:
    patch = api.body(req, bodies.PartialNetworkInterface)
    backend = api.postboot()
    same_id(iface_id, patch.iface_id)
    current = next((n for n in api.config.network_interfaces if n.iface_id == iface_id), None)
    if current is None:
        raise Fault(f"{NETWORK_ERROR}: Unable to update the net device: no network interface has iface_id "
                    f"{iface_id!r}. Please verify the request arguments.")
    rx, tx = patch.rx_rate_limiter, patch.tx_rate_limiter
    api.call(lambda: backend.update_net_rate_limiters(iface_id, rx, tx))
    new = msgspec.structs.replace(current, rx_rate_limiter=patched_limiter(current.rx_rate_limiter, rx),
                                  tx_rate_limiter=patched_limiter(current.tx_rate_limiter, tx))
    api.update(network_interfaces=replace_by(api.config.network_interfaces, new, "iface_id"))
    return no_content()


def patched_limiter(current: cfg.RateLimiter | None, patch: cfg.RateLimiter | None) -> cfg.RateLimiter | None:
    """A limiter's settings after a PATCH, as Firecracker applies one and then reports it.

    A bucket the patch gives replaces the one there, and one with ``size`` or
    ``refill_time`` 0 removes it ("no limit"); a bucket the patch leaves out stays. A
    limiter left with no bucket is reported as none (``null``), as Firecracker does.
    """
    if patch is None:
        return current

    def bucket(old: cfg.TokenBucket | None, new: cfg.TokenBucket | None) -> cfg.TokenBucket | None:
        if new is None:
            return old
        return None if new.size == 0 or new.refill_time == 0 else new

    bandwidth = bucket(current.bandwidth if current else None, patch.bandwidth)
    ops = bucket(current.ops if current else None, patch.ops)
    return None if bandwidth is None and ops is None else cfg.RateLimiter(bandwidth=bandwidth, ops=ops)
