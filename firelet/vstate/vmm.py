"""A built, runnable microVM: its KVM objects, memory, devices and threads.

The builder (:mod:`firelet.builder.boot`) makes a :class:`Vmm`; this module only
runs it: start the event loop and the vCPU threads, pause and resume them, and
end everything exactly once when the guest resets, powers off, crashes, or the
host stops it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Literal

from firelet import seccomp
from firelet.arch.x86_64 import layout
from firelet.events.loop import EventLoop
from firelet.log import DEBUG, get_logger
from firelet.metrics import Metrics
from firelet.vstate.bus import Bus
from firelet.vstate.device_registry import DeviceRegistry
from firelet.vstate.exits import ExitKind, VmExit
from firelet.vstate.vcpu import Vcpu, VcpuGate

log = get_logger(__name__)

#: How long pause() waits for every vCPU to leave KVM_RUN.
PAUSE_TIMEOUT_S = 5.0
#: How long the vCPUs wait at the guest's door for the process's other threads to confine themselves.
CONFINE_TIMEOUT_S = 10.0
#: How often the event loop looks again whether every thread is confined.
_CONFINE_POLL_S = 0.001


class VmmResources:
    """Everything the VM owns that must be released when it ends."""

    __slots__ = ("kvm", "vm_fd", "memory", "closers")

    def __init__(self, kvm: Any, vm_fd: Any, memory: Any, closers: list[Callable[[], None]] | None = None) -> None:
        self.kvm, self.vm_fd, self.memory = kvm, vm_fd, memory
        self.closers: list[Callable[[], None]] = [] if closers is None else closers


class Vmm:
    def __init__(self, resources: VmmResources, event_loop: EventLoop, gate: VcpuGate,
                 metrics: Metrics | None = None) -> None:
        self.resources = resources
        self.memory = resources.memory
        self.event_loop = event_loop
        self.gate = gate
        #: This VM's counters (firelet.metrics): each VM has its own, however many share a process.
        self.metrics = metrics if metrics is not None else Metrics()
        self.vcpus: list[Vcpu] = []
        self.io_bus = Bus()
        self.mmio_bus = Bus()
        self.kernel: Any = None
        self.cmdline = ""
        #: How the boot vCPU enters the kernel: "long" (64-bit boot protocol) or "pvh".
        self.boot_mode: Literal["long", "pvh"] = "long"
        self.entry = 0
        self.start_info = layout.PVH_INFO_START
        #: Every device, by class and id: ``devices.get(Block, "rootfs")``, ``devices.of_kind(Block)``.
        self.devices = DeviceRegistry()
        #: KVM's coalesced I/O ring (firelet.vstate.coalesced), when KVM offers coalesced port I/O.
        self.coalesced_ring: Any = None
        self._exit: VmExit | None = None
        self._exit_lock = threading.Lock()
        self._done = threading.Event()
        self._started = False
        self._closed = False
        self.boot_time: float | None = None
        event_loop.on_failure = lambda exc: self.finish(VmExit(ExitKind.VMM_ERROR, f"event loop: {exc}"))

    # -- lifecycle ----------------------------------------------------------
    def start(self, *, hold: bool = False) -> None:
        """Start the vCPUs and the event loop that serves the devices.

        ``hold``: the vCPU threads start (and confine themselves) but wait before the guest's
        first instruction until :meth:`release` or :meth:`confine_and_release`.
        """
        if self._started:
            raise RuntimeError("microVM already started")
        self._started = True
        self.boot_time = time.monotonic()
        if hold:
            self.gate.entry.clear()
        if self.event_loop.thread is None and not self._done.is_set():
            self.event_loop.start()
        for vcpu in self.vcpus:
            vcpu.start()

    def release(self) -> None:
        """Let vCPUs held by ``start(hold=True)`` into the guest."""
        self.gate.entry.set()

    def confine_and_release(self, timeout_s: float = CONFINE_TIMEOUT_S) -> None:
        """Confine the event loop thread, then release the vCPUs once every thread of the process is confined.

        Called on the event loop thread after it has made every thread it will make (the
        vCPUs, the VM's watcher): a thread inherits its maker's filter. The loop looks again
        every millisecond, so the main thread may confine itself after this returns (as
        ``firelet-vmm`` does once ``InstanceStart`` is answered); a thread that does not
        within ``timeout_s`` ends the VM. In a process that does not confine its threads
        (:func:`firelet.seccomp.enabled`) this releases at once.
        """
        seccomp.confine("vmm")
        deadline = time.monotonic() + timeout_s

        def check() -> None:
            if self._done.is_set():
                return
            waiting = seccomp.unconfined_threads()
            if not waiting:
                self.release()
            elif time.monotonic() > deadline:
                self.finish(VmExit(ExitKind.VMM_ERROR, f"thread(s) {', '.join(waiting)} did not confine "
                                   f"themselves within {timeout_s:g} s; the guest did not run"))
            else:
                self.event_loop.call_later(_CONFINE_POLL_S, check)

        check()

    @property
    def state(self) -> str:
        if not self._started:
            return "Not started"
        if self._done.is_set():
            return "Stopped"
        return "Running" if self.gate.running.is_set() else "Paused"

    def pause(self) -> None:
        """Stop all vCPUs in their tracks; returns once none is inside the guest."""
        if self._done.is_set():
            return
        self.gate.running.clear()
        for vcpu in self.vcpus:
            vcpu.kick()
        if not self.gate.wait_parked(len(self.vcpus), PAUSE_TIMEOUT_S):
            raise TimeoutError("vCPUs did not stop within 5 s")

    def resume(self) -> None:
        for vcpu in self.vcpus:
            vcpu.fd.set_immediate_exit(False)
        self.gate.running.set()

    def finish(self, outcome: VmExit) -> None:
        """Record how the VM ended (the first report wins) and stop every thread."""
        with self._exit_lock:
            if self._exit is not None:
                return
            self._exit = outcome
        log.info("microVM ended: %s", outcome)
        self.gate.stopping.set()
        self.gate.running.set()
        self.gate.entry.set()  # vCPUs held at the door see stopping and end
        for vcpu in self.vcpus:  # the reporting vCPU too: its next KVM_RUN must return at once
            vcpu.kick()
        self.event_loop.stop()
        self._done.set()

    def describe_vcpus(self) -> list[str]:
        """Each vCPU's registers, ``"vCPU N: rip=..."``: for a guest that seems stuck.

        A running VM is paused for the moment it takes (KVM only hands out a vCPU's
        registers while it is out of the guest) and resumed.
        """
        running = self._started and not self._done.is_set() and self.gate.running.is_set()
        if running:
            try:
                self.pause()
            except TimeoutError as exc:  # some vCPU is busy in the VMM: let them all run on
                self.resume()
                return [f"vCPUs: {exc}"]
        try:
            return [f"vCPU {v.index}: {v.describe_state(self.memory)}" for v in self.vcpus]
        finally:
            if running:
                self.resume()

    def stop(self, detail: str = "") -> None:
        self.finish(VmExit(ExitKind.STOPPED, detail))

    def wait(self, timeout: float | None = None) -> VmExit | None:
        """Block until the VM ends; None if ``timeout`` ran out first."""
        if not self._done.wait(timeout):
            return None
        return self._exit

    @property
    def exit(self) -> VmExit | None:
        return self._exit

    def close(self) -> None:
        """Join the threads, flush and close devices, release KVM objects and memory."""
        if self._closed:
            return
        self._closed = True
        if not self._done.is_set():
            self.stop("closed")
        current = threading.current_thread()
        for vcpu in self.vcpus:
            if vcpu.thread is not None and vcpu.thread is not current:
                vcpu.thread.join(timeout=5)
                if vcpu.thread.is_alive():
                    log.warning("vCPU %d did not stop", vcpu.index)
        loop_thread = self.event_loop.thread
        if loop_thread is not None and loop_thread is not current:
            loop_thread.join(timeout=5)
        for closer in reversed(self.resources.closers):
            try:
                closer()
            except Exception:  # keep releasing the rest
                log.warning("error while releasing the VM", exc_info=log.isEnabledFor(DEBUG))
