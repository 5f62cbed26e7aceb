"""``/mmds`` (the metadata store, any time) and ``PUT /mmds/config`` (pre-boot only)."""

from __future__ import annotations

from typing import Any

import msgspec

from firelet.api.context import ApiContext
from firelet.api.routing import Fault, RouteTable, no_content, ok
from firelet.api.server import Request, Response
from firelet.config import model as cfg

routes = RouteTable()


@routes.route("GET", "/mmds", "mmds")
def get_mmds(api: ApiContext, req: Request, _: str) -> Response:
    return ok(api.mmds if api.mmds is not None else {})


@routes.route("PUT", "/mmds", "mmds")
def put_mmds(api: ApiContext, req: Request, _: str) -> Response:
    data = api.body(req, dict[str, Any])
    if len(req.body) > api.mmds_size_limit:
        raise Fault(f"The MMDS data store would exceed its size limit of {api.mmds_size_limit} bytes.")
    api.mmds = data
    return no_content()


@routes.route("PATCH", "/mmds", "mmds")
def patch_mmds(api: ApiContext, req: Request, _: str) -> Response:
    patch = api.body(req, dict[str, Any])
    if api.mmds is None:
        raise Fault("The MMDS data store is not initialized: PUT /mmds first.")
    try:
        merged = _merge_patch(api.mmds, patch)
        size = len(msgspec.json.encode(merged))
    except RecursionError:
        raise Fault("The MMDS patch is nested too deeply.") from None
    if size > api.mmds_size_limit:
        raise Fault(f"The MMDS patch would exceed the size limit of {api.mmds_size_limit} bytes.")
    api.mmds = merged
    return no_content()


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge_patch(out.get(key), value)
    return out


@routes.route("PUT", "/mmds/config", "mmds_config")
def put_mmds_config(api: ApiContext, req: Request, _: str) -> Response:
    api.preboot()
    api.update(mmds_config=api.body(req, cfg.MmdsConfig))
    return no_content()
