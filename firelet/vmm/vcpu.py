"""One thread per vCPU: enter the guest, serve its exits, park on pause.

``KVM_RUN`` releases the GIL, so vCPU threads run guest code in parallel with
each other and with the event loop. Port I/O and MMIO exits are served here on
the buses; everything that ends the VM is reported once through ``on_exit``.

Pausing: the controller clears the run gate, sets ``immediate_exit`` and sends
the thread a signal, so ``KVM_RUN`` returns at once wherever the thread is; the
thread then parks until the gate opens again (or the VM stops).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from firelet.kvm import structs as S
from firelet.metrics import METRICS, Area
from firelet.vmm.bus import Bus
from firelet.vmm.exits import ExitKind, VmExit

log = logging.getLogger(__name__)

ExitCallback = Callable[[VmExit], None]


class VcpuGate:
    """Shared run/pause/stop state of all vCPUs of one VM."""

    def __init__(self) -> None:
        self.running = threading.Event()
        self.running.set()
        self.stopping = threading.Event()
        self._cond = threading.Condition()
        self._parked = 0

    def park(self) -> None:
        """Called by a vCPU thread: wait here while paused."""
        with self._cond:
            self._parked += 1
            self._cond.notify_all()
        try:
            while not self.running.is_set() and not self.stopping.is_set():
                self.running.wait(0.5)
        finally:
            with self._cond:
                self._parked -= 1
                self._cond.notify_all()

    def wait_parked(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` vCPU threads are parked (or the VM is stopping)."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self._parked >= count or self.stopping.is_set(), timeout
            )


class Vcpu:
    def __init__(
        self,
        index: int,
        fd,  # firelet.kvm.VcpuFd
        io_bus: Bus,
        mmio_bus: Bus,
        gate: VcpuGate,
        on_exit: ExitCallback,
        metrics: Area | None = None,
    ) -> None:
        self.index = index
        self.fd = fd
        self.io_bus = io_bus
        self.mmio_bus = mmio_bus
        self.gate = gate
        self.on_exit = on_exit
        self.metrics = metrics if metrics is not None else METRICS.vcpu
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name=f"fl-vcpu{self.index}", daemon=True)
        self.thread.start()

    def kick(self) -> None:
        """Make this vCPU leave ``KVM_RUN`` as soon as possible (from any thread)."""
        self.fd.set_immediate_exit(True)
        if self.thread is not None and self.thread.ident is not None and self.thread.is_alive():
            from firelet.kvm import kick_thread

            kick_thread(self.thread.ident)

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # a VMM bug in exit handling: end the VM, keep the trace in the log
            self.metrics.failures += 1
            log.error("vCPU %d failed", self.index, exc_info=True)
            self.on_exit(VmExit(ExitKind.VMM_ERROR, f"vCPU {self.index}: {type(exc).__name__}: {exc}"))

    def _loop(self) -> None:
        gate = self.gate
        fd = self.fd
        run = fd.run_struct
        handlers = {
            S.KVM_EXIT_IO: self._on_io,
            S.KVM_EXIT_MMIO: self._on_mmio,
        }
        while not gate.stopping.is_set():
            if not gate.running.is_set():
                gate.park()
                continue
            if not fd.run():  # interrupted (kicked): look at the gate again
                fd.set_immediate_exit(False)
                continue
            reason = run.exit_reason
            handler = handlers.get(reason)
            if handler is not None:
                handler(run)
                continue
            self.metrics.add(f"exit_{S.KVM_EXIT_NAMES.get(reason, str(reason))[9:].lower()}")
            outcome = self._classify(run, reason)
            if outcome is not None:
                self.on_exit(outcome)
                return

    def _on_io(self, run) -> None:
        io = run.io
        size = io.size
        data = self.fd.io_data()
        port = io.port
        if io.direction == S.KVM_EXIT_IO_OUT:
            self.metrics.exit_io_out += 1
            for i in range(0, len(data), size):
                self.io_bus.write(port, data[i : i + size])
        else:
            self.metrics.exit_io_in += 1
            for i in range(0, len(data), size):
                self.io_bus.read(port, data[i : i + size])

    def _on_mmio(self, run) -> None:
        mmio = run.mmio
        data = self.fd.mmio_data()
        if mmio.is_write:
            self.metrics.exit_mmio_write += 1
            self.mmio_bus.write(mmio.phys_addr, data)
        else:
            self.metrics.exit_mmio_read += 1
            self.mmio_bus.read(mmio.phys_addr, data)

    def _classify(self, run, reason: int) -> VmExit | None:
        """Turn an exit that is not device I/O into the VM's outcome (None: keep running)."""
        name = S.KVM_EXIT_NAMES.get(reason, str(reason))
        if reason == S.KVM_EXIT_HLT:
            # With the in-kernel LAPIC, HLT is handled by KVM; reaching here means
            # a halted guest with no way to wake up (e.g. a kernel with no APIC).
            return VmExit(ExitKind.POWER_OFF, f"vCPU {self.index} halted")
        if reason == S.KVM_EXIT_SHUTDOWN:
            return VmExit(ExitKind.TRIPLE_FAULT, f"vCPU {self.index}")
        if reason == S.KVM_EXIT_SYSTEM_EVENT:
            kind = run.system_event.type
            if kind == S.KVM_SYSTEM_EVENT_RESET:
                return VmExit(ExitKind.RESET, "system event")
            if kind == S.KVM_SYSTEM_EVENT_SHUTDOWN:
                return VmExit(ExitKind.POWER_OFF, "system event")
            if kind == S.KVM_SYSTEM_EVENT_CRASH:
                return VmExit(ExitKind.CRASH, "system event")
            log.warning("vCPU %d: ignoring system event %d", self.index, kind)
            return None
        if reason == S.KVM_EXIT_FAIL_ENTRY:
            fail = run.fail_entry
            return VmExit(
                ExitKind.KVM_ERROR,
                f"vCPU {self.index}: VM entry failed, hardware reason {fail.hardware_entry_failure_reason:#x}",
            )
        if reason == S.KVM_EXIT_INTERNAL_ERROR:
            internal = run.internal
            data = " ".join(f"{internal.data[i]:#x}" for i in range(min(internal.ndata, 16)))
            return VmExit(
                ExitKind.KVM_ERROR,
                f"vCPU {self.index}: KVM internal error, suberror {internal.suberror} {data}".rstrip(),
            )
        if reason == S.KVM_EXIT_INTR:
            return None
        return VmExit(ExitKind.KVM_ERROR, f"vCPU {self.index}: unexpected exit {name}")
