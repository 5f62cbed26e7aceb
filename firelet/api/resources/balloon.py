"""``/balloon`` and ``/balloon/statistics``: the memory balloon's target and statistics."""

from __future__ import annotations

import msgspec

from firelet.api.context import ApiContext
from firelet.api.routing import Fault, RouteTable, no_content, ok
from firelet.api.server import Request, Response
from firelet.config import model as cfg
from firelet.config import requests as bodies

routes = RouteTable()


def configured(api: ApiContext) -> cfg.Balloon:
    if api.config.balloon is None:
        raise Fault("No balloon device is configured: PUT /balloon before starting the microVM.")
    return api.config.balloon


@routes.route("PUT", "/balloon", "balloon")
def put_balloon(api: ApiContext, req: Request, _: str) -> Response:
    api.preboot()
    api.update(balloon=api.body(req, cfg.Balloon))
    return no_content()


@routes.route("GET", "/balloon", "balloon")
def get_balloon(api: ApiContext, req: Request, _: str) -> Response:
    balloon = configured(api)
    backend = api.backend
    if backend is not None:
        return ok(api.call(backend.balloon_config))
    return ok(balloon)


@routes.route("PATCH", "/balloon", "balloon")
def patch_balloon(api: ApiContext, req: Request, _: str) -> Response:
    balloon = configured(api)
    amount = api.body(req, bodies.BalloonUpdate).amount_mib
    backend = api.backend
    if backend is not None:
        api.call(lambda: backend.update_balloon(amount))
    api.update(balloon=msgspec.structs.replace(balloon, amount_mib=amount))
    return no_content()


@routes.route("GET", "/balloon/statistics", "balloon_stats")
def get_balloon_stats(api: ApiContext, req: Request, _: str) -> Response:
    balloon = configured(api)
    if not balloon.stats_polling_interval_s:
        raise Fault("Balloon statistics are not enabled: set stats_polling_interval_s in PUT /balloon.")
    backend = api.postboot()
    return ok(api.call(backend.balloon_stats))


@routes.route("PATCH", "/balloon/statistics", "balloon_stats")
def patch_balloon_stats(api: ApiContext, req: Request, _: str) -> Response:
    balloon = configured(api)
    interval = api.body(req, bodies.BalloonStatsUpdate).stats_polling_interval_s
    backend = api.backend
    if backend is not None:
        if bool(interval) != bool(balloon.stats_polling_interval_s):
            raise Fault("Balloon statistics cannot be turned on or off after starting the microVM.")
        api.call(lambda: backend.update_balloon_stats_interval(interval))
    api.update(balloon=msgspec.structs.replace(balloon, stats_polling_interval_s=interval))
    return no_content()
