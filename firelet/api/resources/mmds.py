"""``/mmds`` (the metadata store, any time) and ``PUT /mmds/config`` (pre-boot only)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from firelet.api.context import ApiContext, not_supported
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
    config = api.body(req, cfg.MmdsConfig)
    api.preboot()
    # Firecracker's MmdsConfigError texts, in its order of checks.
    if not config.network_interfaces:
        raise Fault("MMDS config error: The list of network interface IDs that allow forwarding MMDS requests "
                    "is empty.")
    known = {n.iface_id for n in api.config.network_interfaces}
    unknown = [i for i in config.network_interfaces if i not in known]
    if unknown:
        raise Fault("MMDS config error: The list of network interface IDs provided contains at least one ID that "
                    f"does not correspond to any existing network interface ({', '.join(unknown)}).")
    raise not_supported("the MMDS network stack is")
