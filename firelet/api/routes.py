"""Firecracker's endpoints: request bodies, state rules and answers.

Status codes follow firecracker.yaml: 204 for an accepted PUT/PATCH, 200 with
JSON for a GET, 400 with ``{"fault_message": ...}`` for anything refused (bad
body, wrong state, unknown path). Before ``InstanceStart`` the API owns the
configuration; afterwards every change goes to the VMM through
:meth:`VmmBackend.submit`, so this thread never touches VMM state.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

import msgspec

from firelet import FIRECRACKER_API_VERSION, __version__
from firelet.controller.interface import BackendError, VmmBackend
from firelet.api.server import DEFAULT_MAX_PAYLOAD, Request, Response, fault
from firelet.errors import FireletError
from firelet.metrics import METRICS, Metrics, MetricsWriter
from firelet.config import model as cfg

log = logging.getLogger("firelet.api")
T = TypeVar("T")

APP_NAME = "firelet"
NOT_AFTER_BOOT = "The requested operation is not supported after starting the microVM."
NOT_BEFORE_BOOT = "The requested operation is not supported before starting the microVM."
#: How long the API waits for the event loop before reporting the VMM as unresponsive.
CALL_TIMEOUT_S = 30.0


class _Fault(Exception):
    """Ends a request with a 400 (or ``status``) and this message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


Handler = Callable[["Api", Request, str], Response]
_ROUTES: dict[tuple[str, str], tuple[Handler, str]] = {}


def _route(method: str, path: str, metric: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        _ROUTES[(method, path)] = (fn, metric)
        return fn
    return register


def _ok(obj: Any) -> Response:
    return Response(200, msgspec.json.encode(obj))


_NO_CONTENT = Response(204)


class Api:
    """The control plane of one microVM: configuration before boot, the backend after."""

    def __init__(self, *, instance_id: str, backend_factory: Callable[[], VmmBackend],
                 config: cfg.VmConfig | None = None, metrics: Metrics = METRICS,
                 mmds_size_limit: int = DEFAULT_MAX_PAYLOAD) -> None:
        self.instance_id = instance_id
        self.config = config if config is not None else cfg.VmConfig()
        self.backend: VmmBackend | None = None
        self.started = threading.Event()
        self.metrics = metrics
        self.metrics_writer: MetricsWriter | None = None
        self.mmds: dict[str, Any] | None = None
        self.mmds_size_limit = mmds_size_limit
        self._backend_factory = backend_factory

    @property
    def state(self) -> str:
        return "Not started" if self.backend is None else self.backend.state

    def handle(self, req: Request) -> Response:
        """Answer one request; never raises."""
        key = _route_key(req.path)
        entry = _ROUTES.get((req.method, key[0])) if key else None
        if entry is None:
            self.metrics.api_server.add("invalid_requests")
            return fault(f"Invalid request method and/or path: {req.method} {req.path[:200]}.")
        fn, metric = entry
        area = self._area(req.method)
        area.add(f"{metric}_count")
        try:
            response = fn(self, req, key[1])
        except _Fault as exc:
            response = fault(str(exc), exc.status)
        except FireletError as exc:
            response = fault(str(exc))
        if response.status >= 400:
            area.add(f"{metric}_fails")
            log.info("API %s %s refused: %s", req.method, req.path, response.body[:200])
        return response

    def _area(self, method: str) -> Any:
        return {"GET": self.metrics.get_api_requests, "PUT": self.metrics.put_api_requests}.get(
            method, self.metrics.patch_api_requests)

    # -- helpers used by the handlers ---------------------------------------
    def body(self, req: Request, type_: type[T]) -> T:
        if not req.body.strip():
            raise _Fault(f"Empty request body: this endpoint expects a JSON {type_.__name__}.")
        try:
            return cfg.decode_json(req.body, type_)
        except cfg.ConfigError as exc:
            raise _Fault(f"Invalid request body: {exc}") from None

    def preboot(self) -> None:
        if self.started.is_set():
            raise _Fault(NOT_AFTER_BOOT)

    def postboot(self) -> VmmBackend:
        if self.backend is None:
            raise _Fault(NOT_BEFORE_BOOT)
        return self.backend

    def update(self, **changes: Any) -> None:
        """Replace parts of the configuration, re-checking the rules that span sections."""
        try:
            self.config = msgspec.structs.replace(self.config, **changes)
        except ValueError as exc:
            raise _Fault(cfg.format_validation_error(exc)) from None

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the VMM's event loop and wait for it; refusals become 400s."""
        backend = self.postboot()
        try:
            return backend.submit(fn).result(timeout=CALL_TIMEOUT_S)
        except FutureTimeout:
            raise _Fault(f"The VMM did not answer within {CALL_TIMEOUT_S:.0f} s.", 500) from None
        except BackendError as exc:
            raise _Fault(str(exc)) from None

    def create_backend(self) -> VmmBackend:
        try:
            return self._backend_factory()
        except FireletError as exc:
            raise _Fault(str(exc)) from None


def _route_key(path: str) -> tuple[str, str] | None:
    """``/drives/rootfs`` -> (``/drives/{id}``, ``rootfs``); None for an empty id segment."""
    for prefix in ("/drives/", "/network-interfaces/"):
        if path.startswith(prefix):
            ident = path[len(prefix):]
            if not ident or "/" in ident:
                return None
            return prefix + "{id}", ident
    return path, ""


def _same_id(path_id: str, body_id: str) -> None:
    if path_id != body_id:
        raise _Fault(f"The id from the path [{path_id}] does not match the id from the body [{body_id}].")


def _replace_by(items: list[T], new: T, attr: str) -> list[T]:
    ident = getattr(new, attr)
    out = [new if getattr(item, attr) == ident else item for item in items]
    return out if any(getattr(i, attr) == ident for i in items) else [*items, new]


# -- Introspection -----------------------------------------------------------
@_route("GET", "/", "instance_info")
def _get_root(api: Api, req: Request, _: str) -> Response:
    return _ok({"id": api.instance_id, "state": api.state, "vmm_version": __version__, "app_name": APP_NAME})


@_route("GET", "/version", "vmm_version")
def _get_version(api: Api, req: Request, _: str) -> Response:
    return _ok({"firecracker_version": FIRECRACKER_API_VERSION})  # docs/firecracker-compat.md, "Identity"


@_route("GET", "/vm/config", "vm_config")
def _get_vm_config(api: Api, req: Request, _: str) -> Response:
    return Response(200, cfg.encode_config(api.config))


# -- Pre-boot configuration --------------------------------------------------
@_route("PUT", "/boot-source", "boot_source")
def _put_boot_source(api: Api, req: Request, _: str) -> Response:
    api.preboot()
    api.update(boot_source=api.body(req, cfg.BootSource))
    return _NO_CONTENT


@_route("GET", "/machine-config", "machine_cfg")
def _get_machine_config(api: Api, req: Request, _: str) -> Response:
    return _ok(api.config.machine_config)


@_route("PUT", "/machine-config", "machine_cfg")
def _put_machine_config(api: Api, req: Request, _: str) -> Response:
    api.preboot()
    api.update(machine_config=api.body(req, cfg.MachineConfig))
    return _NO_CONTENT


@_route("PATCH", "/machine-config", "machine_cfg")
def _patch_machine_config(api: Api, req: Request, _: str) -> Response:
    api.preboot()
    patch = api.body(req, dict[str, Any])
    merged = {**cfg.to_builtins(api.config.machine_config), **patch}
    try:
        machine = cfg.convert(merged, cfg.MachineConfig)
    except cfg.ConfigError as exc:
        raise _Fault(f"Invalid request body: {exc}") from None
    api.update(machine_config=machine)
    return _NO_CONTENT


@_route("PUT", "/drives/{id}", "drive")
def _put_drive(api: Api, req: Request, drive_id: str) -> Response:
    api.preboot()
    drive = api.body(req, cfg.Drive)
    _same_id(drive_id, drive.drive_id)
    api.update(drives=_replace_by(api.config.drives, drive, "drive_id"))
    return _NO_CONTENT


@_route("PUT", "/network-interfaces/{id}", "network")
def _put_net(api: Api, req: Request, iface_id: str) -> Response:
    api.preboot()
    iface = api.body(req, cfg.NetworkInterface)
    _same_id(iface_id, iface.iface_id)
    api.update(network_interfaces=_replace_by(api.config.network_interfaces, iface, "iface_id"))
    return _NO_CONTENT


def _preboot_section(path: str, metric: str, field: str, type_: type[Any]) -> None:
    def handler(api: Api, req: Request, _: str) -> Response:
        api.preboot()
        api.update(**{field: api.body(req, type_)})
        return _NO_CONTENT
    _route("PUT", path, metric)(handler)


_preboot_section("/vsock", "vsock", "vsock", cfg.Vsock)
_preboot_section("/entropy", "entropy", "entropy", cfg.Entropy)
_preboot_section("/balloon", "balloon", "balloon", cfg.Balloon)
_preboot_section("/mmds/config", "mmds_config", "mmds_config", cfg.MmdsConfig)
_preboot_section("/cpu-config", "cpu_cfg", "cpu_config", cfg.CpuConfig)
_preboot_section("/serial", "serial", "serial", cfg.SerialConfig)


@_route("PUT", "/logger", "logger")
def _put_logger(api: Api, req: Request, _: str) -> Response:
    api.preboot()
    logger = api.body(req, cfg.Logger)
    if logger.log_path:
        from firelet import logs

        try:
            handler = logs.FirecrackerLogHandler(
                logger.log_path, api.instance_id, level=logger.level or "Info",
                show_level=bool(logger.show_level), show_log_origin=bool(logger.show_log_origin),
                module=logger.module)
        except OSError as exc:
            raise _Fault(f"Cannot open the log path {logger.log_path}: {exc.strerror}.") from None
        logs.install(handler)
    api.update(logger=logger)
    return _NO_CONTENT


@_route("PUT", "/metrics", "metrics")
def _put_metrics(api: Api, req: Request, _: str) -> Response:
    api.preboot()
    metrics = api.body(req, cfg.Metrics)
    if api.metrics_writer is not None:
        raise _Fault("Metrics are already configured; they can be set up only once.")
    try:
        api.metrics_writer = MetricsWriter(metrics.metrics_path, api.metrics)
    except OSError as exc:
        raise _Fault(f"Cannot open the metrics path {metrics.metrics_path}: {exc.strerror}.") from None
    api.update(metrics=metrics)
    return _NO_CONTENT


# -- MMDS data store (any time) ----------------------------------------------
@_route("GET", "/mmds", "mmds")
def _get_mmds(api: Api, req: Request, _: str) -> Response:
    return _ok(api.mmds if api.mmds is not None else {})


@_route("PUT", "/mmds", "mmds")
def _put_mmds(api: Api, req: Request, _: str) -> Response:
    data = api.body(req, dict[str, Any])
    if len(req.body) > api.mmds_size_limit:
        raise _Fault(f"The MMDS data store would exceed its size limit of {api.mmds_size_limit} bytes.")
    api.mmds = data
    return _NO_CONTENT


@_route("PATCH", "/mmds", "mmds")
def _patch_mmds(api: Api, req: Request, _: str) -> Response:
    patch = api.body(req, dict[str, Any])
    if api.mmds is None:
        raise _Fault("The MMDS data store is not initialized: PUT /mmds first.")
    try:
        merged = _merge_patch(api.mmds, patch)
        size = len(msgspec.json.encode(merged))
    except RecursionError:
        raise _Fault("The MMDS patch is nested too deeply.") from None
    if size > api.mmds_size_limit:
        raise _Fault(f"The MMDS patch would exceed the size limit of {api.mmds_size_limit} bytes.")
    api.mmds = merged
    return _NO_CONTENT


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


from firelet.api import runtime_routes as _runtime_routes  # noqa: E402,F401 - registers the rest
