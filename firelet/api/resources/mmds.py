"""``/mmds`` (the metadata store, any time) and ``PUT /mmds/config`` (pre-boot only)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from firelet.api.context import ApiContext
from firelet.api.routing import Fault, RouteTable, no_content, ok
from firelet.api.server import Request, Response
from firelet.config import model as cfg
from firelet.mmds.store import MmdsError, MmdsLimitExceeded, MmdsStore

routes = RouteTable()


@routes.route("GET", "/mmds", "mmds")
def get_mmds(api: ApiContext, req: Request, _: str) -> Response:
    return ok(api.mmds.value())


@routes.route("PUT", "/mmds", "mmds")
def put_mmds(api: ApiContext, req: Request, _: str) -> Response:
    _apply(api.mmds, api.mmds.put, api.body(req, dict[str, Any]))
    return no_content()


@routes.route("PATCH", "/mmds", "mmds")
def patch_mmds(api: ApiContext, req: Request, _: str) -> Response:
    _apply(api.mmds, api.mmds.patch, api.body(req, dict[str, Any]))
    return no_content()


def _apply(store: MmdsStore, operation: Callable[[Any], None], document: Any) -> None:
    """Firecracker's answers: 413 when the store's limit is exceeded, 400 for other refusals."""
    try:
        operation(document)
    except MmdsLimitExceeded as exc:
        raise Fault(f"MMDS limit exceeded error: {exc} The data store holds at most {store.size_limit} "
                    "bytes of JSON (--mmds-size-limit).", 413) from None
    except MmdsError as exc:
        raise Fault(f"MMDS error: {exc}") from None


@routes.route("PUT", "/mmds/config", "mmds_config")
def put_mmds_config(api: ApiContext, req: Request, _: str) -> Response:
    api.preboot()
    api.update(mmds_config=api.body(req, cfg.MmdsConfig))
    return no_content()
