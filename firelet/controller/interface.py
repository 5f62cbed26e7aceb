"""What the API needs from the VMM, and how its calls cross to the VMM's event loop.

The API server runs in its own thread. It never touches VMM objects directly:
every operation is a plain function handed to :meth:`VmmBackend.submit`, which
runs it on the VMM's event loop and hands back a :class:`concurrent.futures.Future`.
So the VMM needs no locks for the API, and a busy device or vCPU never stops
the API from answering.

The real backend is ``firelet.controller.vmm_controller.VmmController`` (built with
``VmmController(instance_id=...)`` when ``InstanceStart`` arrives); before
that, the API itself holds the configuration and answers for the VM.
Its ``submit`` is the event loop's own (:meth:`firelet.events.loop.EventLoop.submit`):
the VMM has one way for other threads to hand it work.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Literal, Protocol, TypeVar, runtime_checkable

from firelet.errors import FireletError

if TYPE_CHECKING:  # pragma: no cover - keeps msgspec off this module's import path
    from firelet.config.model import Balloon, RateLimiter, VmConfig
    from firelet.config.requests import SnapshotCreateParams, SnapshotLoadParams

T = TypeVar("T")

VmRunState = Literal["Not started", "Running", "Paused"]


class BackendError(FireletError):
    """An operation the VMM refused; the API answers 400 with this message as ``fault_message``."""


class NotSupported(BackendError):
    """An operation firelet cannot do yet (Firecracker answers these with a 400 too)."""


def tap_problem(host_dev_name: str) -> str | None:
    """Why the TAP ``host_dev_name`` cannot be attached as the VMM attaches it, or None when it can.

    The API asks when a PUT names a TAP (Firecracker opens it there), before any VMM
    exists: the TAP is opened in this process's network namespace, the VMM's, and closed
    again; the VMM opens it for good at start. The reason names the device.
    """
    from firelet.devices.virtio.net import NetError, Tap

    try:
        Tap.open(host_dev_name).close()
    except NetError as exc:
        return str(exc)
    return None


def vhost_problem() -> str | None:
    """Why vhost-net cannot serve an interface on this host (no module, no access), or None when it can."""
    import os

    from firelet.devices.virtio.net import NetError
    from firelet.devices.virtio.net.vhost import open_device

    try:
        os.close(open_device())
    except NetError as exc:
        return str(exc)
    return None


@runtime_checkable
class VmmBackend(Protocol):
    """The running microVM, as the API sees it.

    Every method except :meth:`submit`, :meth:`wait` and :attr:`state` is called
    *on the event loop*, through ``submit``. Methods raise :class:`BackendError`
    (or :class:`NotSupported`) for requests they refuse; any other exception is
    reported as an internal error, and the VMM keeps running.
    """

    @property
    def state(self) -> VmRunState:
        """``"Not started"``, ``"Running"`` or ``"Paused"``; safe to read from any thread."""
        ...

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` on the VMM's event loop; thread-safe; the future holds its result or exception."""
        ...

    def start(self, config: VmConfig) -> None:
        """Build and boot the VM described by ``config`` (already validated, kernel present)."""
        ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def send_ctrl_alt_del(self) -> None:
        """Press Ctrl-Alt-Del on the i8042 keyboard (the guest decides what to do)."""
        ...

    def update_drive(self, drive_id: str, path_on_host: str) -> None:
        """Swap a drive's backing file after boot (and tell the guest its size may have changed)."""
        ...

    def update_drive_rate_limiter(self, drive_id: str, rate_limiter: RateLimiter) -> None: ...

    def update_net_rate_limiters(
        self, iface_id: str, rx: RateLimiter | None, tx: RateLimiter | None
    ) -> None: ...

    def balloon_config(self) -> Balloon: ...

    def update_balloon(self, amount_mib: int) -> None: ...

    def balloon_stats(self) -> dict[str, int]:
        """Firecracker's ``BalloonStats`` fields (target_pages, actual_pages, target_mib, actual_mib, ...)."""
        ...

    def update_balloon_stats_interval(self, stats_polling_interval_s: int) -> None: ...

    def create_snapshot(self, params: SnapshotCreateParams) -> None: ...

    def load_snapshot(self, params: SnapshotLoadParams) -> None: ...

    def flush_metrics(self) -> None:
        """Fold the devices' own counters into the VM's :class:`firelet.metrics.Metrics` before a line is written."""
        ...

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the VM has ended and return the VMM's exit code, or None on timeout."""
        ...
