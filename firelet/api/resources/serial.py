"""``PUT /serial``: where the serial console's output goes (pre-boot only)."""

from __future__ import annotations

from firelet.api.context import ApiContext, not_supported
from firelet.api.routing import RouteTable, no_content
from firelet.api.server import Request, Response
from firelet.config import model as cfg

routes = RouteTable()


@routes.route("PUT", "/serial", "serial")
def put_serial(api: ApiContext, req: Request, _: str) -> Response:
    serial = api.body(req, cfg.SerialConfig)
    api.preboot()
    if serial.rate_limiter is not None:
        raise not_supported("serial output rate limiting (serial rate_limiter) is")
    api.update(serial=serial)
    return no_content()
