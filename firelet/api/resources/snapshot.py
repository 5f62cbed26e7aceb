"""``PUT /snapshot/create`` (post-boot, paused) and ``PUT /snapshot/load`` (on a fresh VMM)."""

from __future__ import annotations

from firelet.api.context import ApiContext
from firelet.api.routing import Fault, RouteTable, no_content
from firelet.api.server import Request, Response
from firelet.config import requests as bodies

routes = RouteTable()


@routes.route("PUT", "/snapshot/create", "snapshot_create")
def put_snapshot_create(api: ApiContext, req: Request, _: str) -> Response:
    params = api.body(req, bodies.SnapshotCreateParams)
    backend = api.postboot()
    if backend.state != "Paused":
        raise Fault("The microVM must be paused (PATCH /vm Paused) before a snapshot is created.")
    api.call(lambda: backend.create_snapshot(params))
    return no_content()


@routes.route("PUT", "/snapshot/load", "snapshot_load")
def put_snapshot_load(api: ApiContext, req: Request, _: str) -> Response:
    params = api.body(req, bodies.SnapshotLoadParams)
    if params.mem_file_path is not None:
        api.deprecate("PUT /snapshot/load: mem_file_path field is deprecated.")
    if params.enable_diff_snapshots is not None:
        api.deprecate("PUT /snapshot/load: enable_diff_snapshots field is deprecated.")
    api.preboot()
    c = api.config
    if c.boot_source is not None or c.drives or c.network_interfaces or c.vsock is not None:
        raise Fault("Load snapshot error: Loading a microVM snapshot not allowed after configuring "
                    "boot-specific resources.")
    backend = api.create_backend()
    api.backend = backend  # so that api.call reaches it; undone if the load fails
    try:
        api.call(lambda: backend.load_snapshot(params))
    except BaseException:
        api.backend = None
        api.discard_backend(backend)
        raise
    api.started.set()
    return no_content()
