"""``/hotplug/memory``: a virtio-mem region (PUT pre-boot; PATCH post-boot; GET); firelet has none yet."""

from __future__ import annotations

from firelet.api.context import ApiContext, not_supported
from firelet.api.routing import RouteTable
from firelet.api.server import Request, Response
from firelet.config import model as cfg
from firelet.config import requests as bodies

routes = RouteTable()
WHAT = "memory hot-plug (virtio-mem) is"


@routes.route("PUT", "/hotplug/memory", "hotplug_memory")
def put_memory_hotplug(api: ApiContext, req: Request, _: str) -> Response:
    api.body(req, cfg.MemoryHotplugConfig)
    api.preboot()
    raise not_supported(WHAT)


@routes.route("PATCH", "/hotplug/memory", "hotplug_memory")
def patch_memory_hotplug(api: ApiContext, req: Request, _: str) -> Response:
    api.body(req, bodies.MemoryHotplugSizeUpdate)
    api.postboot()
    raise not_supported(WHAT)


@routes.route("GET", "/hotplug/memory", "hotplug_memory")
def get_memory_hotplug(api: ApiContext, req: Request, _: str) -> Response:
    raise not_supported(WHAT)
