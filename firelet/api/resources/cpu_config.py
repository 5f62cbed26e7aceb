"""``PUT /cpu-config``: a custom CPU template (pre-boot only)."""

from __future__ import annotations

from firelet.api.context import ApiContext
from firelet.api.routing import RouteTable, no_content
from firelet.api.server import Request, Response
from firelet.config import model as cfg

routes = RouteTable()


@routes.route("PUT", "/cpu-config", "cpu_cfg")
def put_cpu_config(api: ApiContext, req: Request, _: str) -> Response:
    api.preboot()
    api.update(cpu_config=api.body(req, cfg.CpuConfig))
    return no_content()
