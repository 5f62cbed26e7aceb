"""The API of one microVM: every resource's routes in one table, and the dispatch of a request.

The resource modules are listed here and nowhere else; adding an endpoint
family means one module in :mod:`firelet.api.resources` and one entry below.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from firelet.api.context import ApiContext
from firelet.api.resources import (
    actions,
    balloon,
    boot,
    cpu_config,
    drives,
    entropy,
    hotplug,
    instance,
    logger_metrics,
    machine,
    mmds,
    network,
    pmem,
    serial,
    snapshot,
    vm,
    vsock,
)
from firelet.api.routing import ID_PREFIXES, Fault, RouteTable
from firelet.api.server import Request, Response, fault
from firelet.errors import FireletError

log = logging.getLogger("firelet.api")

RESOURCES = (instance, boot, machine, drives, pmem, network, vsock, entropy, balloon, hotplug,
             mmds, cpu_config, serial, logger_metrics, actions, vm, snapshot)


@functools.cache
def route_table() -> RouteTable:
    """Every endpoint firelet answers, from the resource modules (merged on first use)."""
    return RouteTable.merge(module.routes for module in RESOURCES)


class Api(ApiContext):
    """The control plane of one microVM: configuration before boot, the backend after."""

    def handle(self, req: Request) -> Response:
        """Answer one request; never raises."""
        table = route_table()
        found = table.find(req.method, req.path)
        if found is None:
            self.metrics.api_server.add("invalid_requests")
            if req.path in ID_PREFIXES and (req.method, req.path + "{id}") in table.routes:
                return fault(f"The ID cannot be empty. ({req.method} {req.path} names no resource)")
            return fault(f"Invalid request method and/or path: {req.method} {req.path[:200]}.")
        route, ident = found
        area = self._area(req.method)
        area.add(f"{route.metric}_count")
        self.deprecations.clear()
        try:
            if req.method == "GET" and req.body.strip():
                raise Fault("GET request cannot have a body.")
            response = route.handler(self, req, ident)
        except Fault as exc:
            response = fault(str(exc), exc.status)
        except FireletError as exc:
            response = fault(str(exc))
        if self.deprecations:  # on refusals too, as Firecracker does
            response.headers = {**(response.headers or {}), "Deprecation": "true"}
        if response.status >= 400:
            area.add(f"{route.metric}_fails")
            log.info("API %s %s refused: %s", req.method, req.path, response.body[:200])
        return response

    def _area(self, method: str) -> Any:
        return {"GET": self.metrics.get_api_requests, "PUT": self.metrics.put_api_requests}.get(
            method, self.metrics.patch_api_requests)
