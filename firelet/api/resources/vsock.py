"""``PUT /vsock``: a vsock device (pre-boot only)."""

from __future__ import annotations

from firelet.api.context import ApiContext
from firelet.api.routing import RouteTable, no_content
from firelet.api.server import Request, Response
from firelet.config import model as cfg

routes = RouteTable()


@routes.route("PUT", "/vsock", "vsock")
def put_vsock(api: ApiContext, req: Request, _: str) -> Response:
    api.preboot()
    api.update(vsock=api.body(req, cfg.Vsock))
    return no_content()
