"""``/machine-config``: vCPUs and memory (GET any time; PUT and PATCH pre-boot only)."""

from __future__ import annotations

from typing import Any

from firelet.api.context import ApiContext
from firelet.api.routing import Fault, RouteTable, no_content, ok
from firelet.api.server import Request, Response
from firelet.config import model as cfg

routes = RouteTable()


@routes.route("GET", "/machine-config", "machine_cfg")
def get_machine_config(api: ApiContext, req: Request, _: str) -> Response:
    return ok(api.config.machine_config)


@routes.route("PUT", "/machine-config", "machine_cfg")
def put_machine_config(api: ApiContext, req: Request, _: str) -> Response:
    api.preboot()
    api.update(machine_config=api.body(req, cfg.MachineConfig))
    return no_content()


@routes.route("PATCH", "/machine-config", "machine_cfg")
def patch_machine_config(api: ApiContext, req: Request, _: str) -> Response:
    """Merged over the current configuration and checked as a whole, as Firecracker does."""
    api.preboot()
    patch = api.body(req, dict[str, Any])
    merged = {**cfg.to_builtins(api.config.machine_config), **patch}
    try:
        machine = cfg.convert(merged, cfg.MachineConfig)
    except cfg.ConfigError as exc:
        raise Fault(f"Invalid request body: {exc}") from None
    api.update(machine_config=machine)
    return no_content()
