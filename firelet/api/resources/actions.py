"""``PUT /actions``: InstanceStart, SendCtrlAltDel and FlushMetrics."""

from __future__ import annotations

from firelet.api.context import ApiContext
from firelet.api.routing import Fault, RouteTable, no_content
from firelet.api.server import Request, Response
from firelet.config import model as cfg
from firelet.config import requests as bodies
from firelet.errors import FireletError

routes = RouteTable()


@routes.route("PUT", "/actions", "actions")
def put_actions(api: ApiContext, req: Request, _: str) -> Response:
    action = api.body(req, bodies.InstanceActionInfo).action_type
    if action == "InstanceStart":
        _instance_start(api)
    elif action == "SendCtrlAltDel":
        backend = api.postboot()
        api.call(backend.send_ctrl_alt_del)
    else:
        _flush_metrics(api)
    return no_content()


def _instance_start(api: ApiContext) -> None:
    api.preboot()
    try:
        cfg.check_startable(api.config)
        cfg.check_config(api.config)
    except cfg.ConfigError as exc:
        raise Fault(f"Cannot start the microVM: {exc}") from None
    backend = api.create_backend()
    config = api.config
    try:
        backend.submit(lambda: backend.start(config)).result(timeout=None)
    except FireletError as exc:
        api.discard_backend(backend)
        raise Fault(f"Cannot start the microVM: {exc}") from None
    except Exception as exc:  # the VMM's bug: the API stays up and says so
        api.discard_backend(backend)
        raise Fault(f"Cannot start the microVM: internal error: {type(exc).__name__}: {exc}", 500) from None
    api.backend = backend
    api.started.set()


def _flush_metrics(api: ApiContext) -> None:
    if api.metrics_writer is None:
        raise Fault("Metrics are not configured: PUT /metrics (or --metrics-path) first.")
    if api.backend is not None:
        api.call(api.backend.flush_metrics)
    if not api.metrics_writer.flush():
        raise Fault(f"Could not write metrics to {api.metrics_writer.path}.")
