"""``/balloon``, ``/balloon/statistics`` and ``/balloon/hinting/*``: the memory balloon.

firelet has no balloon device yet, so ``PUT /balloon`` is refused and the
other operations find no device. Their state rules are Firecracker's: the
PUT is pre-boot only; updating the target or the statistics interval,
reading the statistics and free page hinting need a running VM. The rules
past that point (a configured balloon, handed to the backend) are kept for
when the device lands.
"""

from __future__ import annotations

from typing import NoReturn

import msgspec

from firelet.api.context import ApiContext, not_supported
from firelet.api.routing import Fault, RouteTable, no_content, ok
from firelet.api.server import Request, Response
from firelet.config import model as cfg
from firelet.config import requests as bodies

routes = RouteTable()
WHAT = "the balloon device is"
#: Firecracker's ``BalloonConfigError`` texts.
NOT_FOUND = "Balloon config error: No balloon device found."
TOO_LARGE = "Balloon config error: Amount of pages requested is too large."


def configured(api: ApiContext) -> cfg.Balloon:
    if api.config.balloon is None:
        raise Fault(f"{NOT_FOUND} The balloon device is not supported by firelet yet.")
    return api.config.balloon


@routes.route("PUT", "/balloon", "balloon")
def put_balloon(api: ApiContext, req: Request, _: str) -> Response:
    balloon = api.body(req, cfg.Balloon)
    api.preboot()
    memory = api.config.machine_config.mem_size_mib
    if balloon.amount_mib > memory:
        raise Fault(f"{TOO_LARGE} (amount_mib {balloon.amount_mib} > guest memory {memory} MiB)")
    raise not_supported(WHAT)


@routes.route("GET", "/balloon", "balloon")
def get_balloon(api: ApiContext, req: Request, _: str) -> Response:
    balloon = configured(api)
    backend = api.backend
    if backend is not None:
        return ok(api.call(backend.balloon_config))
    return ok(balloon)


@routes.route("PATCH", "/balloon", "balloon")
def patch_balloon(api: ApiContext, req: Request, _: str) -> Response:
    amount = api.body(req, bodies.BalloonUpdate).amount_mib
    backend = api.postboot()
    balloon = configured(api)
    api.call(lambda: backend.update_balloon(amount))
    api.update(balloon=msgspec.structs.replace(balloon, amount_mib=amount))
    return no_content()


@routes.route("GET", "/balloon/statistics", "balloon_stats")
def get_balloon_stats(api: ApiContext, req: Request, _: str) -> Response:
    backend = api.postboot()
    balloon = configured(api)
    if not balloon.stats_polling_interval_s:
        raise Fault("Balloon config error: Statistics for the balloon device are not enabled "
                    "(set stats_polling_interval_s in PUT /balloon before boot).")
    return ok(api.call(backend.balloon_stats))


@routes.route("PATCH", "/balloon/statistics", "balloon_stats")
def patch_balloon_stats(api: ApiContext, req: Request, _: str) -> Response:
    interval = api.body(req, bodies.BalloonStatsUpdate).stats_polling_interval_s
    backend = api.postboot()
    balloon = configured(api)
    if bool(interval) != bool(balloon.stats_polling_interval_s):
        raise Fault("Balloon config error: Cannot enable/disable the statistics after boot.")
    api.call(lambda: backend.update_balloon_stats_interval(interval))
    api.update(balloon=msgspec.structs.replace(balloon, stats_polling_interval_s=interval))
    return no_content()


def _hinting(api: ApiContext) -> NoReturn:
    """Free page hinting is run by the device once the guest's driver is up: post-boot, if enabled."""
    api.postboot()
    balloon = configured(api)
    if not balloon.free_page_hinting:
        raise Fault("Balloon config error: Free page hinting was not enabled when the device was configured.")
    raise not_supported("free page hinting is")


@routes.route("PATCH", "/balloon/hinting/start", "hinting_start")
def patch_hinting_start(api: ApiContext, req: Request, _: str) -> Response:
    if req.body.strip():  # the body is optional (firecracker.yaml, startBalloonHinting)
        api.body(req, bodies.BalloonStartCmd)
    _hinting(api)


@routes.route("GET", "/balloon/hinting/status", "hinting_status")
def get_hinting_status(api: ApiContext, req: Request, _: str) -> Response:
    _hinting(api)


@routes.route("PATCH", "/balloon/hinting/stop", "hinting_stop")
def patch_hinting_stop(api: ApiContext, req: Request, _: str) -> Response:
    _hinting(api)
