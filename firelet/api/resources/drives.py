"""``/drives/{id}``: virtio-block devices (PUT pre-boot, PATCH post-boot)."""

from __future__ import annotations

import msgspec

from firelet.api.context import ApiContext
from firelet.api.routing import Fault, RouteTable, no_content, replace_by, same_id
from firelet.api.server import Request, Response
from firelet.config import model as cfg
from firelet.config import requests as bodies

routes = RouteTable()


@routes.route("PUT", "/drives/{id}", "drive")
def put_drive(api: ApiContext, req: Request, drive_id: str) -> Response:
    api.preboot()
    drive = api.body(req, cfg.Drive)
    same_id(drive_id, drive.drive_id)
    api.update(drives=replace_by(api.config.drives, drive, "drive_id"))
    return no_content()


@routes.route("PATCH", "/drives/{id}", "drive")
def patch_drive(api: ApiContext, req: Request, drive_id: str) -> Response:
    backend = api.postboot()
    patch = api.body(req, bodies.PartialDrive)
    same_id(drive_id, patch.drive_id)
    current = next((d for d in api.config.drives if d.drive_id == drive_id), None)
    if current is None:
        raise Fault(f"No drive with drive_id {drive_id!r} is configured.")
    new = current
    if patch.path_on_host is not None:
        path = patch.path_on_host
        api.call(lambda: backend.update_drive(drive_id, path))
        new = msgspec.structs.replace(new, path_on_host=path)
    if patch.rate_limiter is not None:
        limiter = patch.rate_limiter
        api.call(lambda: backend.update_drive_rate_limiter(drive_id, limiter))
        new = msgspec.structs.replace(new, rate_limiter=limiter)
    api.update(drives=[new if d.drive_id == drive_id else d for d in api.config.drives])
    return no_content()
