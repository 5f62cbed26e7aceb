"""Endpoints that act on the running VM: actions, post-boot updates, balloon, pause, snapshots.

Registered into :mod:`firelet.api.routes` on import. Each handler checks
Firecracker's state rule first, then hands the work to the VMM's event loop.
"""

from __future__ import annotations

import msgspec

from firelet.config import requests as models
from firelet.api.routes import _NO_CONTENT, Api, _Fault, _ok, _route, _same_id
from firelet.api.server import Request, Response
from firelet.errors import FireletError
from firelet.config import model as cfg


# -- Actions -------------------------------------------------------------------
@_route("PUT", "/actions", "actions")
def _put_actions(api: Api, req: Request, _: str) -> Response:
    action = api.body(req, models.InstanceActionInfo).action_type
    if action == "InstanceStart":
        _instance_start(api)
    elif action == "SendCtrlAltDel":
        backend = api.postboot()
        api.call(backend.send_ctrl_alt_del)
    else:
        _flush_metrics(api)
    return _NO_CONTENT


def _instance_start(api: Api) -> None:
    api.preboot()
    try:
        cfg.check_startable(api.config)
        cfg.check_config(api.config)
    except cfg.ConfigError as exc:
        raise _Fault(f"Cannot start the microVM: {exc}") from None
    backend = api.create_backend()
    config = api.config
    try:
        backend.submit(lambda: backend.start(config)).result(timeout=None)
    except FireletError as exc:
        _discard(backend)
        raise _Fault(f"Cannot start the microVM: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the VMM's bug; the API stays up and says so
        _discard(backend)
        raise _Fault(f"Cannot start the microVM: internal error: {type(exc).__name__}: {exc}", 500) from None
    api.backend = backend
    api.started.set()


def _discard(backend: object) -> None:
    """Release a backend whose start failed (its event loop thread, fds), so a retry starts clean."""
    close = getattr(backend, "close", None)
    if close is not None:
        try:
            close()
        except Exception:  # noqa: BLE001 - already failing; the start error is what the client needs
            pass


def _flush_metrics(api: Api) -> None:
    if api.metrics_writer is None:
        raise _Fault("Metrics are not configured: PUT /metrics (or --metrics-path) first.")
    if api.backend is not None:
        api.call(api.backend.flush_metrics)
    if not api.metrics_writer.flush():
        raise _Fault(f"Could not write metrics to {api.metrics_writer.path}.")


# -- Post-boot device updates -----------------------------------------------------
@_route("PATCH", "/drives/{id}", "drive")
def _patch_drive(api: Api, req: Request, drive_id: str) -> Response:
    backend = api.postboot()
    patch = api.body(req, models.PartialDrive)
    _same_id(drive_id, patch.drive_id)
    current = next((d for d in api.config.drives if d.drive_id == drive_id), None)
    if current is None:
        raise _Fault(f"No drive with drive_id {drive_id!r} is configured.")
    new = current
    if patch.path_on_host is not None:
        path = patch.path_on_host
        api.call(lambda: backend.update_drive(drive_id, path))
        new = msgspec.structs.replace(new, path_on_host=path)
    if patch.rate_limiter is not None:
        limiter = patch.rate_limiter
        api.call(lambda: backend.update_drive_rate_limiter(drive_id, limiter))
        new = msgspec.structs.replace(new, rate_limiter=limiter)
    api.update(drives=[new if d.drive_id == drive_id else d for d in api.config.drives])
    return _NO_CONTENT


@_route("PATCH", "/network-interfaces/{id}", "network")
def _patch_net(api: Api, req: Request, iface_id: str) -> Response:
    backend = api.postboot()
    patch = api.body(req, models.PartialNetworkInterface)
    _same_id(iface_id, patch.iface_id)
    current = next((n for n in api.config.network_interfaces if n.iface_id == iface_id), None)
    if current is None:
        raise _Fault(f"No network interface with iface_id {iface_id!r} is configured.")
    rx, tx = patch.rx_rate_limiter, patch.tx_rate_limiter
    api.call(lambda: backend.update_net_rate_limiters(iface_id, rx, tx))
    new = msgspec.structs.replace(
        current, rx_rate_limiter=rx or current.rx_rate_limiter, tx_rate_limiter=tx or current.tx_rate_limiter)
    api.update(network_interfaces=[new if n.iface_id == iface_id else n for n in api.config.network_interfaces])
    return _NO_CONTENT


@_route("PATCH", "/vm", "vm")
def _patch_vm(api: Api, req: Request, _: str) -> Response:
    backend = api.postboot()
    wanted = api.body(req, models.VmState).state
    api.call(backend.pause if wanted == "Paused" else backend.resume)
    return _NO_CONTENT


# -- Balloon -------------------------------------------------------------------------
def _balloon(api: Api) -> cfg.Balloon:
    if api.config.balloon is None:
        raise _Fault("No balloon device is configured: PUT /balloon before starting the microVM.")
    return api.config.balloon


@_route("GET", "/balloon", "balloon")
def _get_balloon(api: Api, req: Request, _: str) -> Response:
    balloon = _balloon(api)
    if api.backend is not None:
        backend = api.backend
        return _ok(api.call(backend.balloon_config))
    return _ok(balloon)


@_route("PATCH", "/balloon", "balloon")
def _patch_balloon(api: Api, req: Request, _: str) -> Response:
    balloon = _balloon(api)
    amount = api.body(req, models.BalloonUpdate).amount_mib
    if api.backend is not None:
        backend = api.backend
        api.call(lambda: backend.update_balloon(amount))
    api.update(balloon=msgspec.structs.replace(balloon, amount_mib=amount))
    return _NO_CONTENT


@_route("GET", "/balloon/statistics", "balloon_stats")
def _get_balloon_stats(api: Api, req: Request, _: str) -> Response:
    balloon = _balloon(api)
    if not balloon.stats_polling_interval_s:
        raise _Fault("Balloon statistics are not enabled: set stats_polling_interval_s in PUT /balloon.")
    backend = api.postboot()
    return _ok(api.call(backend.balloon_stats))


@_route("PATCH", "/balloon/statistics", "balloon_stats")
def _patch_balloon_stats(api: Api, req: Request, _: str) -> Response:
    balloon = _balloon(api)
    interval = api.body(req, models.BalloonStatsUpdate).stats_polling_interval_s
    if api.backend is not None:
        if bool(interval) != bool(balloon.stats_polling_interval_s):
            raise _Fault("Balloon statistics cannot be turned on or off after starting the microVM.")
        backend = api.backend
        api.call(lambda: backend.update_balloon_stats_interval(interval))
    api.update(balloon=msgspec.structs.replace(balloon, stats_polling_interval_s=interval))
    return _NO_CONTENT


# -- Snapshots ---------------------------------------------------------------------
@_route("PUT", "/snapshot/create", "snapshot_create")
def _put_snapshot_create(api: Api, req: Request, _: str) -> Response:
    backend = api.postboot()
    params = api.body(req, models.SnapshotCreateParams)
    if backend.state != "Paused":
        raise _Fault("The microVM must be paused (PATCH /vm Paused) before a snapshot is created.")
    api.call(lambda: backend.create_snapshot(params))
    return _NO_CONTENT


@_route("PUT", "/snapshot/load", "snapshot_load")
def _put_snapshot_load(api: Api, req: Request, _: str) -> Response:
    api.preboot()
    params = api.body(req, models.SnapshotLoadParams)
    c = api.config
    if c.boot_source is not None or c.drives or c.network_interfaces or c.vsock is not None:
        raise _Fault("Loading a snapshot is not allowed after configuring boot-specific resources.")
    backend = api.create_backend()
    api.backend = backend  # so that api.call reaches it; undone if the load fails
    try:
        api.call(lambda: backend.load_snapshot(params))
    except BaseException:
        api.backend = None
        _discard(backend)
        raise
    api.started.set()
    return _NO_CONTENT

