"""What every API handler works on: the configuration before boot, the backend after.

Before ``InstanceStart`` the API owns the configuration; afterwards every
change goes to the VMM through :meth:`VmmBackend.submit`, so the API thread
never touches VMM state. The VMM is reached only through
:mod:`firelet.controller.interface`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

import msgspec

from firelet.api.faults import NOT_AFTER_BOOT, NOT_BEFORE_BOOT, Fault
from firelet.api.server import DEFAULT_MAX_PAYLOAD, Request
from firelet.config import model as cfg
from firelet.controller.interface import BackendError, VmmBackend
from firelet.errors import FireletError
from firelet.metrics import METRICS, Metrics, MetricsWriter
from firelet.mmds.store import MmdsStore

T = TypeVar("T")
log = logging.getLogger("firelet.api")

#: Firecracker's prefix for a body that does not decode (its ``RequestError::SerdeJson``).
BAD_BODY = "An error occurred when deserializing the json body of a request"

#: How long the API waits for the event loop before reporting the VMM as unresponsive.
CALL_TIMEOUT_S = 30.0


def not_supported(what: str) -> Fault:
    """A 400 for a feature firelet lacks, in Firecracker's ``NotSupported`` words plus which and why."""
    return Fault(f"The requested operation is not supported: {what} not supported by firelet yet.")


class ApiContext:
    """The control plane's state for one microVM, and the checks every handler shares."""

    def __init__(self, *, instance_id: str, backend_factory: Callable[[], VmmBackend],
                 config: cfg.VmConfig | None = None, metrics: Metrics = METRICS,
                 mmds_size_limit: int = DEFAULT_MAX_PAYLOAD) -> None:
        self.instance_id = instance_id
        self.config = config if config is not None else cfg.VmConfig()
        self.backend: VmmBackend | None = None
        self.started = threading.Event()
        self.metrics = metrics
        self.metrics_writer: MetricsWriter | None = None
        #: The metadata store; the API fills it, the VMM's MMDS network stack will read it.
        self.mmds = MmdsStore(mmds_size_limit)
        self._backend_factory = backend_factory
        #: Deprecation notes of the request being answered (one API thread: no lock).
        self.deprecations: list[str] = []

    @property
    def state(self) -> str:
        return "Not started" if self.backend is None else self.backend.state

    def body(self, req: Request, type_: type[T]) -> T:
        """The request body decoded as ``type_``; a 400 naming the field when it is not one."""
        if not req.body.strip():
            raise Fault(f"Empty {req.method} request. This endpoint expects a JSON {type_.__name__}.")
        try:
            return cfg.decode_json(req.body, type_)
        except cfg.ConfigError as exc:
            raise Fault(f"{BAD_BODY}: {exc}.") from None

    def deprecate(self, message: str) -> None:
        """Firecracker's answer to a deprecated field: a warning in the log, ``Deprecation: true`` on the answer."""
        log.warning("%s", message)
        self.deprecations.append(message)

    def preboot(self) -> None:
        if self.started.is_set():
            raise Fault(NOT_AFTER_BOOT)

    def postboot(self) -> VmmBackend:
        if self.backend is None:
            raise Fault(NOT_BEFORE_BOOT)
        return self.backend

    def update(self, **changes: Any) -> None:
        """Replace parts of the configuration, re-checking the rules that span sections."""
        try:
            self.config = msgspec.structs.replace(self.config, **changes)
        except ValueError as exc:
            raise Fault(cfg.format_validation_error(exc)) from None

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the VMM's event loop and wait for it; refusals become 400s."""
        backend = self.postboot()
        try:
            return backend.submit(fn).result(timeout=CALL_TIMEOUT_S)
        except FutureTimeout:
            raise Fault(f"The VMM did not answer within {CALL_TIMEOUT_S:.0f} s.", 500) from None
        except BackendError as exc:
            raise Fault(str(exc)) from None

    def create_backend(self) -> VmmBackend:
        try:
            return self._backend_factory()
        except FireletError as exc:
            raise Fault(str(exc)) from None

    @staticmethod
    def discard_backend(backend: object) -> None:
        """Release a backend whose start or load failed (its loop thread, fds), so a retry starts clean."""
        close = getattr(backend, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # already failing: the start error is what the client needs
                log.debug("releasing a failed backend failed too", exc_info=True)
