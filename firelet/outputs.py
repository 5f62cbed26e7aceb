"""Where a VM's log, metrics and serial console go, from its config's ``logger``, ``metrics`` and ``serial``.

``firelet-vmm`` applies these sections through its API (``PUT /logger``,
``/metrics``, ``/serial``); ``firelet run --config-file`` and :class:`firelet.MicroVM`
apply them here, the same way: the log as Firecracker-format lines
(``firelet.logs``) to ``log_path``, or to stderr when the section gives no path;
metrics as JSON lines every 60 s and when the VM is closed (``firelet.metrics``);
the guest's serial output to ``serial_out_path``, a file or named pipe
(firecracker.yaml, ``SerialConfig``). What cannot be honoured is refused in one
line, before anything is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from firelet.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    from firelet.config.model import Logger, VmConfig
    from firelet.metrics import Metrics, MetricsWriter

#: Firecracker's instance id when none is given (its ``--id`` default).
DEFAULT_INSTANCE_ID = "anonymous-instance"
#: Where a ``logger`` section without ``log_path`` sends the log: stdout carries the guest's console.
STDERR_PATH = "/dev/stderr"


class OutputPlan(NamedTuple):
    """What the config's sections ask for (None: the section is absent or leaves the default)."""

    logger: Logger | None
    metrics_path: str | None
    serial_out_path: str | None


def plan_outputs(config: VmConfig, *, console_given: bool) -> OutputPlan:
    """Decide, without opening anything, what the sections ask for; refuse what cannot be done.

    ``console_given``: the caller already chose where the console goes (``--console``,
    ``MicroVM(console=...)``), so a ``serial_out_path`` would contradict it.
    """
    serial_out_path = None
    if config.serial is not None:
        if config.serial.rate_limiter is not None:
            raise UsageError("serial.rate_limiter is not supported by firelet yet; remove it from the configuration")
        serial_out_path = config.serial.serial_out_path or None
        if serial_out_path is not None and console_given:
            raise UsageError(f"serial.serial_out_path ({serial_out_path}) and the console given both say where "
                             "the guest's console goes: keep one")
    metrics_path = config.metrics.metrics_path if config.metrics is not None else None
    return OutputPlan(config.logger, metrics_path, serial_out_path)


class Outputs:
    """The opened destinations; :meth:`close` writes the last metrics line and releases them."""

    def __init__(self) -> None:
        self.console: Any = None  # an FdSink for serial_out_path, else None (the caller's console)
        self.metrics_writer: MetricsWriter | None = None
        self._serial_fd: int | None = None

    def close(self) -> None:
        import os

        if self.metrics_writer is not None:
            self.metrics_writer.close()
            self.metrics_writer = None
        if self._serial_fd is not None:
            os.close(self._serial_fd)
            self._serial_fd = None


def open_outputs(plan: OutputPlan, metrics: Metrics, *, instance_id: str = DEFAULT_INSTANCE_ID) -> Outputs:
    """Open what ``plan`` asks for: install the log handler, start the metrics writer, open the serial output."""
    from firelet.metrics import MetricsWriter, open_sink

    outputs = Outputs()
    try:
        if plan.logger is not None:
            _install_log(plan.logger, instance_id)
        if plan.metrics_path is not None:
            try:
                outputs.metrics_writer = MetricsWriter(plan.metrics_path, metrics)
            except OSError as exc:
                raise UsageError(f"metrics.metrics_path {plan.metrics_path}: cannot open it: {exc.strerror}") from None
        if plan.serial_out_path is not None:
            from firelet.devices.legacy.console import FdSink

            try:
                outputs._serial_fd = open_sink(plan.serial_out_path)
            except OSError as exc:
                raise UsageError(f"serial.serial_out_path {plan.serial_out_path}: cannot open it: "
                                 f"{exc.strerror}") from None
            outputs.console = FdSink(outputs._serial_fd)
    except BaseException:
        outputs.close()
        raise
    return outputs


def _install_log(logger: Logger, instance_id: str) -> None:
    """The process's log, as ``firelet-vmm --log-path`` would set it up (the log is per process)."""
    import logging

    from firelet import __version__, logs

    path = logger.log_path or STDERR_PATH
    try:
        handler = logs.FirecrackerLogHandler(path, instance_id, level=logger.level or "Info",
                                             show_level=bool(logger.show_level),
                                             show_log_origin=bool(logger.show_log_origin), module=logger.module)
    except OSError as exc:
        where = f"logger.log_path {path}" if logger.log_path else "logger (to stderr)"
        raise UsageError(f"{where}: cannot open it: {exc.strerror}") from None
    logs.install(handler)
    logging.getLogger("firelet").info("Running firelet v%s", __version__)
