"""``PUT /logger`` and ``PUT /metrics``: where the log and the metrics lines go (pre-boot only)."""

from __future__ import annotations

from firelet.api.checks import os_error_text
from firelet.api.context import ApiContext, not_supported
from firelet.api.routing import Fault, RouteTable, no_content
from firelet.api.server import Request, Response
from firelet.config import model as cfg
from firelet.metrics import MetricsWriter

routes = RouteTable()
#: Firecracker's ``MetricsConfigError::InitializationFailure``, behind its ``Metrics error`` prefix.
METRICS_INIT = "Metrics error: Cannot initialize the metrics system due to bad user input:"


@routes.route("PUT", "/logger", "logger")
def put_logger(api: ApiContext, req: Request, _: str) -> Response:
    logger = api.body(req, cfg.Logger)
    api.preboot()
    if logger.log_path:
        from firelet import logs

        try:
            handler = logs.FirecrackerLogHandler(
                logger.log_path, api.instance_id, level=logger.level or "Info",
                show_level=bool(logger.show_level), show_log_origin=bool(logger.show_log_origin),
                module=logger.module)
        except OSError as exc:
            raise Fault(f"Cannot open the log path {logger.log_path}: {exc.strerror}.") from None
        logs.install(handler)
    api.update(logger=logger)
    return no_content()


@routes.route("PUT", "/metrics", "metrics")
def put_metrics(api: ApiContext, req: Request, _: str) -> Response:
    metrics = api.body(req, cfg.Metrics)
    api.preboot()
    if metrics.emit_id:
        raise not_supported("the instance id in metrics lines (metrics emit_id) is")
    if metrics.properties:
        raise not_supported("metrics properties are")
    if api.metrics_writer is not None:
        raise Fault(f"{METRICS_INIT} Reinitialization of metrics not allowed. (metrics already go to "
                    f"{api.metrics_writer.path}; they can be set up only once)")
    try:
        api.metrics_writer = MetricsWriter(metrics.metrics_path, api.metrics)
    except OSError as exc:
        raise Fault(f"{METRICS_INIT} {os_error_text(exc)} (metrics_path {metrics.metrics_path}).") from None
    api.update(metrics=metrics)
    return no_content()
