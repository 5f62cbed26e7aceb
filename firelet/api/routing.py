"""The API's routing core: route tables, the fault a handler raises, and answer helpers.

Each resource module (:mod:`firelet.api.resources`) fills its own
:class:`RouteTable`; :class:`firelet.api.routes.Api` merges them once, so
importing a module registers nothing anywhere else. Status codes follow
firecracker.yaml: 204 for an accepted PUT/PATCH, 200 with JSON for a GET, 400
with ``{"fault_message": ...}`` for anything refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import msgspec

from firelet.api.faults import Fault
from firelet.api.server import Response

if TYPE_CHECKING:  # pragma: no cover - a type only; the context imports nothing from here at run time
    from firelet.api.context import ApiContext
    from firelet.api.server import Request

T = TypeVar("T")

# Firecracker's wording for the state rules (its ``VmmActionError::OperationNotSupported*``).
#: Path prefixes whose last segment is a resource id (``/drives/rootfs`` -> ``/drives/{id}``).
ID_PREFIXES = ("/drives/", "/network-interfaces/", "/pmem/")


#: A handler gets the API's state, the request and the id from the path ("" when the path has none).
Handler = Callable[["ApiContext", "Request", str], Response]


class Route(NamedTuple):
    handler: Handler
    #: The metrics key: ``<metric>_count`` / ``<metric>_fails`` in Firecracker's ``*_api_requests``.
    metric: str


class RouteTable:
    """(method, path pattern) -> :class:`Route`, filled by the decorator of one resource module."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Route] = {}

    def route(self, method: str, path: str, metric: str) -> Callable[[Handler], Handler]:
        def register(fn: Handler) -> Handler:
            self.add(method, path, metric, fn)
            return fn
        return register

    def add(self, method: str, path: str, metric: str, fn: Handler) -> None:
        key = (method, path)
        if key in self.routes:
            raise ValueError(f"route {method} {path} is defined twice")
        self.routes[key] = Route(fn, metric)

    @classmethod
    def merge(cls, tables: Iterable[RouteTable]) -> RouteTable:
        out = cls()
        for table in tables:
            for (method, path), route in table.routes.items():
                out.add(method, path, route.metric, route.handler)
        return out

    def find(self, method: str, path: str) -> tuple[Route, str] | None:
        """The route for a concrete path, and the id taken from it; None when nothing matches."""
        key = route_key(path)
        if key is None:
            return None
        route = self.routes.get((method, key[0]))
        return (route, key[1]) if route is not None else None


def route_key(path: str) -> tuple[str, str] | None:
    """``/drives/rootfs`` -> (``/drives/{id}``, ``rootfs``); None for an empty or nested id segment."""
    for prefix in ID_PREFIXES:
        if path.startswith(prefix):
            ident = path[len(prefix):]
            if not ident or "/" in ident:
                return None
            return prefix + "{id}", ident
    return path, ""


def ok(obj: Any) -> Response:
    """200 with ``obj`` as JSON."""
    return Response(200, msgspec.json.encode(obj))


def no_content() -> Response:
    return Response(204)


def same_id(path_id: str, body_id: str) -> None:
    """Firecracker's rule: the id in the path names the resource the body describes."""
    if path_id != body_id:
        raise Fault(f"The id from the path does not match the id from the body! "
                    f"(path: [{path_id}], body: [{body_id}])")


def replace_by(items: list[T], new: T, attr: str) -> list[T]:
    """``items`` with the one whose ``attr`` equals ``new``'s replaced, or ``new`` appended."""
    ident = getattr(new, attr)
    out = [new if getattr(item, attr) == ident else item for item in items]
    return out if any(getattr(i, attr) == ident for i in items) else [*items, new]
