"""``/pmem/{id}``: virtio-pmem devices (PUT pre-boot, PATCH post-boot); firelet has none yet."""

from __future__ import annotations

from firelet.api.context import ApiContext, not_supported
from firelet.api.routing import RouteTable, same_id
from firelet.api.server import Request, Response
from firelet.config import model as cfg
from firelet.config import requests as bodies

routes = RouteTable()
WHAT = "virtio-pmem devices are"


@routes.route("PUT", "/pmem/{id}", "pmem")
def put_pmem(api: ApiContext, req: Request, pmem_id: str) -> Response:
    pmem = api.body(req, cfg.Pmem)
    api.preboot()
    same_id(pmem_id, pmem.id)
    raise not_supported(WHAT)


@routes.route("PATCH", "/pmem/{id}", "pmem")
def patch_pmem(api: ApiContext, req: Request, pmem_id: str) -> Response:
    patch = api.body(req, bodies.PartialPmem)
    same_id(pmem_id, patch.id)
    api.postboot()
    raise not_supported(WHAT)
