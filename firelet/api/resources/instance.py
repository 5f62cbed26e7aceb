"""``GET /``, ``GET /version`` and ``GET /vm/config``: what the instance is and how it is configured."""

from __future__ import annotations

from firelet import FIRECRACKER_API_VERSION, __version__
from firelet.api.context import ApiContext
from firelet.api.routing import RouteTable, ok
from firelet.api.server import Request, Response
from firelet.config.export import full_vm_configuration

APP_NAME = "firelet"

routes = RouteTable()


@routes.route("GET", "/", "instance_info")
def get_instance_info(api: ApiContext, req: Request, _: str) -> Response:
    return ok({"id": api.instance_id, "state": api.state, "vmm_version": __version__, "app_name": APP_NAME})


@routes.route("GET", "/version", "vmm_version")
def get_version(api: ApiContext, req: Request, _: str) -> Response:
    return ok({"firecracker_version": FIRECRACKER_API_VERSION})


@routes.route("GET", "/vm/config", "vm_config")
def get_vm_config(api: ApiContext, req: Request, _: str) -> Response:
    return ok(full_vm_configuration(api.config))
