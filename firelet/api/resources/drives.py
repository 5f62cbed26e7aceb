"""``/drives/{id}``: virtio-block devices (PUT pre-boot, PATCH post-boot).

As Firecracker, the backing file is opened when the request names it, so a
missing or unwritable image is refused at the PUT (or PATCH) itself.
"""

from __future__ import annotations

import msgspec

from firelet.api.checks import open_problem
from firelet.api.context import ApiContext, not_supported
from firelet.api.routing import Fault, RouteTable, no_content, replace_by, same_id
from firelet.api.server import Request, Response
from firelet.config import model as cfg
from firelet.config import requests as bodies

routes = RouteTable()


@routes.route("PUT", "/drives/{id}", "drive")
def put_drive(api: ApiContext, req: Request, drive_id: str) -> Response:
    drive = api.body(req, cfg.Drive)
    api.preboot()
    same_id(drive_id, drive.drive_id)
    if drive.socket is not None:
        raise not_supported("vhost-user block devices (drive socket) are")
    other_root = next((d.drive_id for d in api.config.drives if d.is_root_device and d.drive_id != drive_id), None)
    if drive.is_root_device and other_root is not None:
        raise Fault(f"Drive config error: A root block device already exists! (drive {other_root} is the root device)")
    assert drive.path_on_host is not None  # the model requires it when there is no socket
    problem = open_problem(drive.path_on_host, writable=not drive.is_read_only, block_device_ok=True)
    if problem:
        raise Fault(f"Drive config error: Unable to create the virtio block device: {problem} "
                    f"(path_on_host {drive.path_on_host}, opened "
                    f"{'read-only' if drive.is_read_only else 'read-write'}).")
    if drive.is_read_only is None:  # what the device is, and what GET /vm/config reports
        drive = msgspec.structs.replace(drive, is_read_only=False)
    api.update(drives=replace_by(api.config.drives, drive, "drive_id"))
    return no_content()


@routes.route("PATCH", "/drives/{id}", "drive")
def patch_drive(api: ApiContext, req: Request, drive_id: str) -> Response:
    patch = api.body(req, bodies.PartialDrive)
    backend = api.postboot()
    same_id(drive_id, patch.drive_id)
    current = next((d for d in api.config.drives if d.drive_id == drive_id), None)
    if current is None:
        raise Fault(f"Drive config error: Unable to patch the block device: no drive with drive_id {drive_id!r}. "
                    "Please verify the request arguments.")
    if patch.path_on_host is not None:
        path = patch.path_on_host
        problem = open_problem(path, writable=not current.is_read_only, block_device_ok=True)
        if problem:
            raise Fault(f"Drive config error: Unable to patch the block device: {problem} (path_on_host {path}). "
                        "Please verify the request arguments.")
        api.call(lambda: backend.update_drive(drive_id, path))
        new = msgspec.structs.replace(current, path_on_host=path)
        api.update(drives=[new if d.drive_id == drive_id else d for d in api.config.drives])
        current = new
    if patch.rate_limiter is not None:
        limiter = patch.rate_limiter
        api.call(lambda: backend.update_drive_rate_limiter(drive_id, limiter))
        new = msgspec.structs.replace(current, rate_limiter=bodies.patched_rate_limiter(current.rate_limiter, limiter))
        api.update(drives=[new if d.drive_id == drive_id else d for d in api.config.drives])
    return no_content()
