"""``firelet-vmm``: one microVM per process, driven through Firecracker's API and flags.

Accepts Firecracker's process flags so that existing launchers (the jailer,
SDKs, scripts) start it unchanged. The API server runs on its own thread; the
main thread only waits for the VM to end (or a signal) and cleans up: it
removes the API socket and writes a last metrics line.
"""

from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
import traceback  # loaded by logging already: the formatter below needs it on confined threads
from typing import TYPE_CHECKING, Any

import firelet.cli.vmm_setup as setup
from firelet import FIRECRACKER_API_VERSION, __version__
from firelet.errors import FireletError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    from firelet.api.routes import Api
    from firelet.controller.interface import VmmBackend
    from firelet.events.loop import EventLoop

log = logging.getLogger("firelet.vmm")

DEFAULT_API_SOCK = "/run/firecracker.socket"  # Firecracker's default --api-sock
DEFAULT_INSTANCE_ID = "anonymous-instance"
_ID_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")  # Firecracker: alphanumerics and '-', at most 64
#: How long SIGUSR2's vCPU report waits for the event loop (a pause itself gives up after 5 s).
_REPORT_TIMEOUT_S = 10.0


#: What ``--version`` prints: what the program is, and which Firecracker it stands in for.
VERSION_LINE = f"firelet {__version__} (Firecracker API {FIRECRACKER_API_VERSION})"
#: Linux's PR_SET_NAME (linux/prctl.h): the calling thread's name, which ps, top and psutil show.
_PR_SET_NAME = 15


def build_parser(prog: str = "firelet-vmm") -> argparse.ArgumentParser:
    """Firecracker 1.17's process flags (src/firecracker/src/main.rs), each one accepted."""
    from firelet.api.server import DEFAULT_MAX_PAYLOAD

    p = argparse.ArgumentParser(prog=prog, description="Run one microVM, controlled through Firecracker's API "
                                f"({VERSION_LINE}).")
    p.add_argument("--api-sock", default=DEFAULT_API_SOCK, metavar="PATH", help="Unix socket for the API")
    p.add_argument("--config-file", metavar="PATH", help="Firecracker JSON configuration: configure and start at once")
    p.add_argument("--no-api", action="store_true", help="no API socket (needs --config-file)")
    p.add_argument("--id", default=DEFAULT_INSTANCE_ID, help="instance id (letters, digits, '-'; at most 64)")
    p.add_argument("--log-path", metavar="PATH", help="file or named pipe for the log")
    p.add_argument("--level", default="Info", help="log level: Error, Warning, Info, Debug, Trace, Off")
    p.add_argument("--module", help="log only messages from this module path")
    p.add_argument("--show-level", action="store_true", help="put the level in each log line")
    p.add_argument("--show-log-origin", action="store_true", help="put the source file and line in each log line")
    p.add_argument("--metrics-path", metavar="PATH", help="file or named pipe for JSON metrics lines")
    p.add_argument("--boot-timer", action="store_true",
                   help="log the guest's boot time when it writes 123 to the first MMIO window (0xd0000000)")
    p.add_argument("--http-api-max-payload-size", type=int, default=DEFAULT_MAX_PAYLOAD, metavar="BYTES")
    p.add_argument("--mmds-size-limit", type=int, metavar="BYTES",
                   help="MMDS data store limit (default: the payload limit)")
    p.add_argument("--metadata", metavar="PATH", help="JSON file to put in the MMDS data store at start")
    p.add_argument("--enable-pci", action="store_true",
                   help="accepted; firelet has no PCI transport yet, so devices stay on virtio-mmio (logged)")
    p.add_argument("--snapshot-version", action="store_true", help="print the snapshot data format version")
    p.add_argument("--describe-snapshot", metavar="PATH", help="print a snapshot state file's data format version")
    p.add_argument("--no-seccomp", action="store_true",
                   help="run the VMM's threads without seccomp filters (default: firelet's per-thread filters)")
    p.add_argument("--seccomp-filter", metavar="PATH",
                   help="per-thread seccomp filters in seccompiler's JSON format (Firecracker takes its compiled "
                        "output; firelet compiles the JSON itself)")
    p.add_argument("--start-time-us", type=int, help="process start wall time, from the jailer (µs)")
    p.add_argument("--start-time-cpu-us", type=int, help="process start CPU time, from the jailer (µs)")
    p.add_argument("--parent-cpu-time-us", type=int, help="the jailer's own CPU time (µs)")
    p.add_argument("--version", action="version", version=VERSION_LINE)
    return p


def console(prog: str = "firelet-vmm") -> int:
    """The ``firelet-vmm`` command's entry point: the process is a VMM (see :mod:`firelet.cli.lean`)."""
    from firelet.cli.lean import dump_stacks_on_signal, hide_typing_extensions

    hide_typing_extensions()
    dump_stacks_on_signal()
    return main(prog=prog)


def firecracker_console() -> int:
    """The ``firecracker`` command: firelet-vmm under the name Firecracker's tools look for.

    Tools that find their VMM by process name (``psutil.Process.name()``, ``pgrep``)
    see ``firecracker``; ``--version``, ``GET /`` and the log still say firelet
    (docs/firecracker-compat.md).
    """
    set_process_name("firecracker")
    return console(prog="firecracker")


def set_process_name(name: str) -> None:
    """Name this thread, and so the process while it runs on the main thread (/proc/PID/comm).

    A console script started through its shebang line is already named after the
    script, but not when run as ``python -m`` or through a wrapper; threads started
    later inherit the name. Best effort: a failure only leaves the old name.
    """
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        log.debug("could not set the process name to %s", name, exc_info=True)


def main(argv: list[str] | None = None, *, prog: str = "firelet-vmm") -> int:
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format=f"{prog}: %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_NoSourceFormatter(f"{prog}: %(levelname)s %(name)s: %(message)s"))
    # stderr gets warnings and errors only, whatever level a logger set through the API asks for:
    # a client that never reads our stderr must not stall the VMM on a full pipe.
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.WARNING)
    try:
        return run(args)
    except FireletError as exc:
        log.debug("%s failed", prog, exc_info=True)
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug in firelet: one line for people
        log.debug("unexpected failure", exc_info=True)
        print(f"{prog}: internal error: {type(exc).__name__}: {exc} (please report firelet's bug)", file=sys.stderr)
        return 70


class _NoSourceFormatter(logging.Formatter):
    """Tracebacks without their source lines: reading those opens files, which a confined thread may not."""

    def formatException(self, ei: Any) -> str:
        _, exc, tb = ei
        frames = traceback.StackSummary.extract(traceback.walk_tb(tb), lookup_lines=False)
        lines = ["Traceback (most recent call last):"]
        lines += [f'  File "{f.filename}", line {f.lineno}, in {f.name}' for f in frames]
        return "\n".join([*lines, f"{type(exc).__name__}: {exc}"])


def _check_args(args: argparse.Namespace) -> None:
    if args.snapshot_version or args.describe_snapshot is not None:
        flag = "--snapshot-version" if args.snapshot_version else "--describe-snapshot"
        raise FireletError(f"{flag}: snapshots are not supported by firelet yet, so there is no snapshot data "
                           "format to report")
    if args.no_seccomp and args.seccomp_filter is not None:
        raise UsageError("--no-seccomp and --seccomp-filter exclude each other; give one of them")
    if args.no_api and not args.config_file:
        raise UsageError("--no-api needs --config-file: without the API there is no other way to configure the VM")
    if not _ID_RE.match(args.id):
        raise UsageError(f"--id {args.id!r}: use 1 to 64 letters, digits or '-'")
    if args.http_api_max_payload_size <= 0:
        raise UsageError("--http-api-max-payload-size: expected a positive number of bytes")
    if args.mmds_size_limit is not None and args.mmds_size_limit <= 0:
        raise UsageError("--mmds-size-limit: expected a positive number of bytes")


class _Terminated(Exception):
    """SIGTERM/SIGHUP arrived: clean up and leave."""


def _on_signal(signum: int, _frame: Any) -> None:
    raise _Terminated(signum)


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    from firelet import seccomp

    policy = seccomp.resolve_policy(args.no_seccomp, args.seccomp_filter)
    if policy is not None:
        _import_before_confinement()
        seccomp.enable(policy)  # from here on each VMM thread confines itself at its start point
    # vCPUs are kicked out of KVM_RUN by a signal whose handler only the main thread can install.
    from firelet.kvm import install_kick_handler

    install_kick_handler()
    from firelet.api.routes import Api
    from firelet.api.server import ApiServer, Request, bind_unix_socket, remove_socket_file
    from firelet.config.files import load_config_file
    from firelet.events.loop import EventLoop
    from firelet.metrics import Metrics

    # The event loop thread is made here, by the unconfined main thread: a thread inherits its
    # maker's filter, and the API thread that asks for the VM is confined from its start.
    loop = EventLoop()
    loop.start()
    # The VM's counters: the API counts requests in them from the start, the VM once built.
    api = Api(instance_id=args.id, backend_factory=lambda: _make_backend(args, api, loop), metrics=Metrics(),
              mmds_size_limit=args.mmds_size_limit or args.http_api_max_payload_size)
    setup.setup_logger(api, args)
    metadata = setup.read_metadata(args.metadata) if args.metadata else None
    file_config = load_config_file(args.config_file) if args.config_file else None
    server = None
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _on_signal)
    from firelet.cli.lean import on_dump_signal

    remove_report = on_dump_signal(lambda: _report_vcpus(api.backend))
    try:
        setup.setup_metrics(api, args)  # before the socket answers: FlushMetrics must find it
        if metadata is not None:  # ...and the first GET /mmds the data
            setup.apply(api, Request, "PUT", "/mmds", metadata, what="--metadata")
        if not args.no_api:
            server = ApiServer(bind_unix_socket(args.api_sock), api.handle,
                               max_payload=args.http_api_max_payload_size)
            setup.record_startup_time(api, args)
            server.start()
            log.info("API listening on %s", args.api_sock)
        if file_config is not None:
            setup.configure_and_start(api, file_config, Request)
        return _wait_for_vm(api)
    except _Terminated:
        return 0
    finally:
        remove_report()
        if server is not None:
            server.stop()
            remove_socket_file(args.api_sock)
        _close_backend(api.backend)
        _close_loop(loop)
        if api.metrics_writer is not None:
            api.metrics_writer.close()


#: What the VMM's threads import lazily after they have confined themselves (an import opens
#: files and maps extension modules executable, which no filter allows): imported at start instead.
LATE_IMPORTS = ("json", "ipaddress", "firelet.logs", "firelet.config.support", "firelet.controller.vmm_controller",
                "firelet.devices.legacy.console",
                "firelet.devices.virtio.net")  # PUT /network-interfaces opens the TAP on the API thread


def _import_before_confinement() -> None:
    import importlib

    for name in LATE_IMPORTS:
        importlib.import_module(name)


def _report_vcpus(backend: Any) -> None:
    """After the thread stacks on SIGUSR2: each vCPU's registers, if a VM runs.

    Read on the event loop, in turn with API calls: a pause or resume from a client
    cannot interleave with the moment the report pauses the vCPUs.
    """
    vmm = getattr(backend, "vmm", None)
    if vmm is None:
        return
    try:
        lines = backend.submit(vmm.describe_vcpus).result(timeout=_REPORT_TIMEOUT_S)
    except Exception as exc:  # a diagnostic must not end the VMM
        lines = [f"vCPU state unavailable ({type(exc).__name__}: {exc})"]
    print("\n".join(f"firelet-vmm: {line}" for line in lines), file=sys.stderr, flush=True)


def _wait_for_vm(api: Api) -> int:
    """Confine the main thread, then block until the VM has started and then ended; its exit code.

    Here, after the API thread, the event loop and the metrics writer exist and (with
    ``--config-file``) ``InstanceStart`` was answered: the vCPUs wait for this confinement.
    """
    from firelet import seccomp

    seccomp.confine("main")
    while not api.started.wait(0.5):
        pass
    backend = api.backend
    assert backend is not None
    while True:
        code = backend.wait(0.5)
        if code is not None:
            return code


def _make_backend(args: argparse.Namespace, api: Api, loop: EventLoop) -> VmmBackend:
    """The real VMM on the event loop made at start, imported only when a VM starts (keeps the
    API's start-up small; with seccomp it was imported at start, see :data:`LATE_IMPORTS`)."""
    from firelet.controller.interface import BackendError

    if args.enable_pci:  # said as the devices are made, so a logger set through the API gets it too
        log.warning("--enable-pci: firelet has no PCI transport yet; virtio devices stay on virtio-mmio, "
                    "announced on the kernel command line (guests need CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES)")

    try:
        from firelet.controller.vmm_controller import VmmController
        from firelet.devices.legacy.console import FdSink
    except ImportError as exc:
        raise BackendError(f"the VMM is not available in this firelet build ({exc})") from None
    console = None
    serial = api.config.serial
    if serial is not None and serial.serial_out_path:
        from firelet.metrics import open_sink

        try:
            console = FdSink(open_sink(serial.serial_out_path))
        except OSError as exc:
            raise BackendError(f"cannot open serial_out_path {serial.serial_out_path}: {exc.strerror}") from None
    return VmmController(instance_id=args.id, console=console, boot_timer=args.boot_timer, metrics=api.metrics,
                         loop=loop)


def _close_backend(backend: Any) -> None:
    close = getattr(backend, "close", None)
    if close is not None:
        try:
            close()
        except Exception:  # leaving anyway; say so in the log
            log.warning("closing the VMM failed", exc_info=True)


def _close_loop(loop: EventLoop) -> None:
    """Stop the event loop made at start (a VM's end has stopped it already) and release it."""
    loop.stop()
    if loop.thread is not None:
        loop.thread.join(timeout=5)
        if loop.thread.is_alive():
            log.warning("the event loop did not stop")
            return
    loop.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(console())
