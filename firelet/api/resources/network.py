"""``/network-interfaces/{id}``: virtio-net devices (PUT pre-boot, PATCH post-boot)."""

from __future__ import annotations

import msgspec

from firelet.api.context import ApiContext
from firelet.api.routing import Fault, RouteTable, no_content, replace_by, same_id
from firelet.api.server import Request, Response
from firelet.config import model as cfg
from firelet.config import requests as bodies

routes = RouteTable()


@routes.route("PUT", "/network-interfaces/{id}", "network")
def put_network_interface(api: ApiContext, req: Request, iface_id: str) -> Response:
    api.preboot()
    iface = api.body(req, cfg.NetworkInterface)
    same_id(iface_id, iface.iface_id)
    api.update(network_interfaces=replace_by(api.config.network_interfaces, iface, "iface_id"))
    return no_content()


@routes.route("PATCH", "/network-interfaces/{id}", "network")
def patch_network_interface(api: ApiContext, req: Request, iface_id: str) -> Response:
    backend = api.postboot()
    patch = api.body(req, bodies.PartialNetworkInterface)
    same_id(iface_id, patch.iface_id)
    current = next((n for n in api.config.network_interfaces if n.iface_id == iface_id), None)
    if current is None:
        raise Fault(f"No network interface with iface_id {iface_id!r} is configured.")
    rx, tx = patch.rx_rate_limiter, patch.tx_rate_limiter
    api.call(lambda: backend.update_net_rate_limiters(iface_id, rx, tx))
    new = msgspec.structs.replace(
        current, rx_rate_limiter=rx or current.rx_rate_limiter, tx_rate_limiter=tx or current.tx_rate_limiter)
    api.update(network_interfaces=[new if n.iface_id == iface_id else n for n in api.config.network_interfaces])
    return no_content()
