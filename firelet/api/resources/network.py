"""``/network-interfaces/{id}``: virtio-net devices (PUT pre-boot, PATCH post-boot).

firelet has no virtio-net device yet: a well-formed PUT is refused as not
supported, so nothing is accepted that the VM could not have.
"""

from __future__ import annotations

import msgspec

from firelet.api.context import ApiContext, not_supported
from firelet.api.routing import Fault, RouteTable, no_content, replace_by, same_id
from firelet.api.server import Request, Response
from firelet.config import model as cfg
from firelet.config import requests as bodies

routes = RouteTable()
WHAT = "network interfaces (virtio-net) are"


@routes.route("PUT", "/network-interfaces/{id}", "network")
def put_network_interface(api: ApiContext, req: Request, iface_id: str) -> Response:
    iface = api.body(req, cfg.NetworkInterface)
    api.preboot()
    same_id(iface_id, iface.iface_id)
    raise not_supported(WHAT)


@routes.route("PATCH", "/network-interfaces/{id}", "network")
def patch_network_interface(api: ApiContext, req: Request, iface_id: str) -> Response:
    patch = api.body(req, bodies.PartialNetworkInterface)
    backend = api.postboot()
    same_id(iface_id, patch.iface_id)
    current = next((n for n in api.config.network_interfaces if n.iface_id == iface_id), None)
    if current is None:
        raise Fault(f"Network config error: no network interface has iface_id {iface_id!r}; {WHAT} not "
                    "supported by firelet yet.")
    rx, tx = patch.rx_rate_limiter, patch.tx_rate_limiter
    api.call(lambda: backend.update_net_rate_limiters(iface_id, rx, tx))
    new = msgspec.structs.replace(
        current, rx_rate_limiter=rx or current.rx_rate_limiter, tx_rate_limiter=tx or current.tx_rate_limiter)
    api.update(network_interfaces=replace_by(api.config.network_interfaces, new, "iface_id"))
    return no_content()
