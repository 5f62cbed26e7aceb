"""``PUT /vsock``: a virtio-vsock device (pre-boot only); firelet has none yet, so it is refused."""

from __future__ import annotations

from firelet.api.context import ApiContext, not_supported
from firelet.api.routing import RouteTable
from firelet.api.server import Request, Response
from firelet.config import model as cfg

routes = RouteTable()


@routes.route("PUT", "/vsock", "vsock")
def put_vsock(api: ApiContext, req: Request, _: str) -> Response:
    vsock = api.body(req, cfg.Vsock)
    api.preboot()
    if vsock.vsock_id is not None:
        api.deprecate("PUT /vsock: vsock_id field is deprecated.")
    raise not_supported("the vsock device is")
