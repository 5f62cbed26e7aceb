"""``PUT /boot-source``: the kernel, initrd and command line (pre-boot only)."""

from __future__ import annotations

from firelet.api.context import ApiContext
from firelet.api.routing import RouteTable, no_content
from firelet.api.server import Request, Response
from firelet.config import model as cfg

routes = RouteTable()


@routes.route("PUT", "/boot-source", "boot_source")
def put_boot_source(api: ApiContext, req: Request, _: str) -> Response:
    api.preboot()
    api.update(boot_source=api.body(req, cfg.BootSource))
    return no_content()
