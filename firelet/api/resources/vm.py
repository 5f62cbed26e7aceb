"""``PATCH /vm``: pause and resume the running microVM (post-boot only)."""

from __future__ import annotations

from firelet.api.context import ApiContext
from firelet.api.routing import RouteTable, no_content
from firelet.api.server import Request, Response
from firelet.config import requests as bodies

routes = RouteTable()


@routes.route("PATCH", "/vm", "vm")
def patch_vm(api: ApiContext, req: Request, _: str) -> Response:
    wanted = api.body(req, bodies.VmState).state
    backend = api.postboot()
    api.call(backend.pause if wanted == "Paused" else backend.resume)
    return no_content()
