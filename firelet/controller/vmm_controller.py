"""The real VMM behind the API: runs API operations on the VMM's event loop.

Implements :class:`firelet.controller.interface.VmmBackend`. The controller runs on an
event loop that exists before the VM (so the API can hand it work before then): its own,
or one the caller made earlier (``firelet-vmm`` makes it at start, on its unconfined main
thread, so that the loop thread's maker is not the confined API thread).
``InstanceStart`` builds the VM onto that loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from firelet import seccomp, threads
from firelet.controller.interface import BackendError, NotSupported, VmRunState
from firelet.events.loop import EventLoop, LoopStopped
from firelet.log import get_logger
from firelet.metrics import Metrics

log = get_logger(__name__)
T = TypeVar("T")


class VmmController:
    def __init__(self, instance_id: str = "anonymous-instance", console: Any = None, *,
                 boot_timer: bool = False, metrics: Metrics | None = None, loop: EventLoop | None = None) -> None:
        self.instance_id = instance_id
        #: The VM's counters: firelet-vmm hands in the ones its API counts requests in.
        self.metrics = metrics if metrics is not None else Metrics()
        self._console = console
        #: Firecracker's ``--boot-timer``: log the guest's boot time, counted from the start request.
        self._boot_timer = boot_timer
        #: A loop handed in stays the caller's: a failed start leaves it running for the next backend.
        self._own_loop = loop is None
        self.loop = loop if loop is not None else EventLoop()
        if self._own_loop:
            self.loop.start()
        self.vmm: Any = None
        self.config: Any = None
        self._ended = threading.Event()

    # -- threading ------------------------------------------------------------
    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` on the VMM's event loop (its :meth:`~firelet.events.loop.EventLoop.submit`)."""
        future = self.loop.submit(fn)
        if future.done() and isinstance(future.exception(), LoopStopped):
            refused: Future[T] = Future()
            refused.set_exception(BackendError("the VMM has stopped"))
            return refused
        return future

    @property
    def state(self) -> VmRunState:
        if self.vmm is None:
            return "Not started"
        state = self.vmm.state
        return "Paused" if state == "Paused" else "Running"

    # -- operations (run on the event loop) ----------------------------------
    def start(self, config: Any) -> None:
        from firelet.builder.boot import ConsoleSpec, build_vmm
        from firelet.devices.legacy.console import FdSink

        if self.vmm is not None:
            raise BackendError("the microVM is already running")
        timer = None
        if self._boot_timer:
            from firelet.devices.pseudo.boot_timer import BootTimer, Timestamp

            timer = BootTimer(Timestamp.now(), report=log.info)
        console = ConsoleSpec(self._console if self._console is not None else FdSink(1))
        self.vmm = build_vmm(config, console, event_loop=self.loop, boot_timer=timer, metrics=self.metrics)
        self.config = config
        # Every thread this one makes is made before it confines itself (a thread inherits its
        # maker's filter); the vCPUs confine themselves and wait until the whole process is confined.
        self.vmm.start(hold=True)
        threading.Thread(target=self._watch, name=threads.WATCH, daemon=True).start()
        self.vmm.confine_and_release()

    def _watch(self) -> None:
        seccomp.confine("watch")
        self.vmm.wait()
        self._ended.set()

    def _vmm(self) -> Any:
        if self.vmm is None:
            raise BackendError("the microVM has not been started")
        return self.vmm

    def pause(self) -> None:
        self._vmm().pause()

    def resume(self) -> None:
        self._vmm().resume()

    def send_ctrl_alt_del(self) -> None:
        from firelet.devices.legacy.i8042 import I8042

        i8042 = self._vmm().devices.get(I8042)
        if i8042 is None:
            raise BackendError("the microVM has no i8042 keyboard controller to send Ctrl-Alt-Del to")
        i8042.trigger_ctrl_alt_del()

    def _drive(self, drive_id: str) -> Any:
        """The running VM's virtio-blk device for ``drive_id``, or the API's 400."""
        from firelet.devices.virtio.block import Block

        device = self._vmm().devices.get(Block, drive_id)
        if device is None:
            raise BackendError(f"no drive with drive_id {drive_id!r}")
        return device

    def update_drive(self, drive_id: str, path_on_host: str) -> None:
        device = self._drive(drive_id)
        try:
            device.update_backing_file(path_on_host)
        except OSError as exc:
            raise BackendError(f"drive {drive_id}: cannot open {path_on_host}: {exc.strerror}") from None

    def update_drive_rate_limiter(self, drive_id: str, rate_limiter: Any) -> None:
        """Replace a drive's buckets live (on the event loop, the thread its queue is served on)."""
        device = self._drive(drive_id)
        try:
            device.update_rate_limiter(rate_limiter)
        except ValueError as exc:
            raise BackendError(f"drive {drive_id}: rate_limiter.{exc}") from None

    def update_net_rate_limiters(self, iface_id: str, rx: Any, tx: Any) -> None:
        """Replace the given buckets of an interface's RX and TX limiters, live (on the event loop)."""
        from firelet.devices.virtio.net import NetInterface

        device = self._vmm().devices.get(NetInterface, iface_id)
        if device is None:
            raise BackendError(f"Network config error: Unable to update the net device: no network interface "
                               f"has iface_id {iface_id!r}. Please verify the request arguments.")
        try:
            device.update_rate_limiters(rx, tx)
        except ValueError as exc:  # a bucket the device cannot hold; nothing was changed
            raise BackendError(f"Network config error: Unable to update the net device: {exc}.") from None

    def balloon_config(self) -> Any:
        raise NotSupported("the balloon device is not supported by firelet yet")

    def update_balloon(self, amount_mib: int) -> None:
        raise NotSupported("the balloon device is not supported by firelet yet")

    def balloon_stats(self) -> dict[str, int]:
        raise NotSupported("the balloon device is not supported by firelet yet")

    def update_balloon_stats_interval(self, stats_polling_interval_s: int) -> None:
        raise NotSupported("the balloon device is not supported by firelet yet")

    def create_snapshot(self, params: Any) -> None:
        raise NotSupported("snapshots are not supported by firelet yet")

    def load_snapshot(self, params: Any) -> None:
        raise NotSupported("snapshots are not supported by firelet yet")

    def flush_metrics(self) -> None:
        """Fold the devices' own counters into the VM's metrics, on the loop (cumulative values)."""
        self.metrics.collect()

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the VM ends; its exit code (0 for a clean end), None on timeout."""
        if self.vmm is None and not self._ended.wait(timeout):
            return None
        outcome = self.vmm.wait(timeout)
        if outcome is None:
            return None
        return outcome.exit_code

    def close(self) -> None:
        if self.vmm is not None:
            self.vmm.close()  # stops and joins the loop
        elif self._own_loop:
            self.loop.stop()
        if self._own_loop:
            thread = self.loop.thread
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=5)
            if thread is None or not thread.is_alive():
                self.loop.close()
