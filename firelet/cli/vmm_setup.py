"""What firelet-vmm's process flags set up before its API answers: the logger, the metrics
file, the MMDS data of ``--metadata``, the startup-time metrics, and ``--config-file``
applied through the API's own handler as a client would send it."""

from __future__ import annotations

import argparse
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from firelet import FIRECRACKER_API_VERSION, __version__
from firelet.errors import FireletError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    from firelet.api.routes import Api


def setup_logger(api: Api, args: argparse.Namespace) -> None:
    if not args.log_path:
        return
    from firelet import logs
    from firelet.config.model import Logger
    from firelet.config.rules import normalize_log_level

    try:
        level = normalize_log_level(args.level)
    except ValueError as exc:
        raise UsageError(f"--{exc}") from None
    try:
        handler = logs.FirecrackerLogHandler(args.log_path, args.id, level=level, show_level=args.show_level,
                                             show_log_origin=args.show_log_origin, module=args.module)
    except OSError as exc:
        raise UsageError(f"--log-path {args.log_path}: cannot open it: {exc.strerror}") from None
    logs.install(handler)
    api.update(logger=Logger(log_path=args.log_path, level=level, show_level=args.show_level,
                             show_log_origin=args.show_log_origin, module=args.module))
    logging.getLogger("firelet").info("Running firelet-vmm v%s (Firecracker API %s)", __version__,
                                      FIRECRACKER_API_VERSION)


def setup_metrics(api: Api, args: argparse.Namespace) -> None:
    if not args.metrics_path:
        return
    from firelet.config.model import Metrics
    from firelet.metrics import MetricsWriter

    try:
        api.metrics_writer = MetricsWriter(args.metrics_path, api.metrics)
    except OSError as exc:
        raise UsageError(f"--metrics-path {args.metrics_path}: cannot open it: {exc.strerror}") from None
    api.update(metrics=Metrics(metrics_path=args.metrics_path))


def configure_and_start(api: Api, config: Any, request_type: Any) -> None:
    """Apply a --config-file through the same endpoints an API client would use, then start."""
    import msgspec

    body = msgspec.json.encode
    steps: list[tuple[str, str, Any]] = []
    if config.logger is not None and api.config.logger is None:
        steps.append(("PUT", "/logger", config.logger))
    if config.metrics is not None and api.metrics_writer is None:
        steps.append(("PUT", "/metrics", config.metrics))
    steps.append(("PUT", "/machine-config", config.machine_config))
    if config.boot_source is not None:
        steps.append(("PUT", "/boot-source", config.boot_source))
    steps += [("PUT", f"/drives/{d.drive_id}", d) for d in config.drives]
    steps += [("PUT", f"/network-interfaces/{n.iface_id}", n) for n in config.network_interfaces]
    for key, path in (("vsock", "/vsock"), ("entropy", "/entropy"), ("balloon", "/balloon"),
                      ("mmds_config", "/mmds/config"), ("cpu_config", "/cpu-config"), ("serial", "/serial")):
        if getattr(config, key) is not None:
            steps.append(("PUT", path, getattr(config, key)))
    steps.append(("PUT", "/actions", {"action_type": "InstanceStart"}))
    for method, path, obj in steps:
        apply(api, request_type, method, path, body(obj), what=f"config file: {path.strip('/')}")


def apply(api: Api, request_type: Any, method: str, path: str, body: bytes, *, what: str) -> None:
    """One request through the API's own handler, as a client would send it; a refusal ends the VMM."""
    import msgspec

    response = api.handle(request_type(method, path, "", "HTTP/1.1", {}, body))
    if response.status >= 300:
        message = msgspec.json.decode(response.body).get("fault_message", "")
        raise FireletError(f"{what}: {message}")


def read_metadata(path: str) -> bytes:
    """Firecracker's ``--metadata``: a JSON file whose content the MMDS data store starts with."""
    import msgspec

    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise UsageError(f"--metadata {path}: cannot read it: {exc.strerror}") from None
    try:
        msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise UsageError(f"--metadata {path}: not valid JSON: {exc}") from None
    return data


def record_startup_time(api: Api, args: argparse.Namespace) -> None:
    """Firecracker's ``api_server.process_startup_time_us`` / ``_cpu_us``: start until the socket listens."""
    now_us = time.time_ns() // 1000
    cpu_us = int(time.process_time() * 1e6)
    if args.start_time_us is not None:
        api.metrics.api_server.process_startup_time_us = max(0, now_us - args.start_time_us)
    else:
        api.metrics.api_server.process_startup_time_us = since_process_start_us()
    api.metrics.api_server.process_startup_time_cpu_us = cpu_us - (args.start_time_cpu_us or 0)


def since_process_start_us() -> int:
    """Wall time since this process started, from /proc (proc(5): stat field 22 is in clock ticks)."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        with open("/proc/uptime", "rb") as f:
            uptime_s = float(f.read().split()[0])
        start_s = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return max(0, int((uptime_s - start_s) * 1e6))
    except (OSError, ValueError, IndexError):
        return 0
