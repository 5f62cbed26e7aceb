"""One thread per vCPU: enter the guest, serve its exits, park on pause.

``KVM_RUN`` releases the GIL, so vCPU threads run guest code in parallel with
each other and with the event loop. Port I/O and MMIO exits are served here on
the buses; everything that ends the VM is reported once through ``on_exit``.

Pausing: the controller clears the run gate, sets ``immediate_exit`` and sends
the thread a signal, so ``KVM_RUN`` returns at once wherever the thread is; the
thread then parks until the gate opens again (or the VM stops).
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from typing import Protocol

from firelet import seccomp, threads
from firelet.arch.x86_64.regs import X86_CR0_PG
from firelet.kvm import structs as S
from firelet.log import DEBUG, get_logger
from firelet.metrics import Area
from firelet.vstate.bus import Bus
from firelet.vstate.exits import ExitKind, VmExit

log = get_logger(__name__)

ExitCallback = Callable[[VmExit], None]

#: Marks a vCPU state no guest can be in (see :meth:`Vcpu.describe_state`); tests look for it.
IMPOSSIBLE_STATE = "not the guest's state, the host KVM's fault"
#: The page-table root's address bits: page-aligned (the low bits are flags: PCD, PWT, PCID),
#: at most 52 bits wide (MAXPHYADDR; Intel SDM vol. 3A §4.5).
_CR3_ROOT_MASK = ((1 << 52) - 1) & ~0xFFF


class GuestRam(Protocol):
    def check_range(self, addr: int, length: int, /) -> bool: ...


def impossible_page_table_root(cr0: int, cr3: int, memory: GuestRam) -> bool:
    """Whether paging is on with its root table outside guest RAM: the vCPU could not take a step."""
    return bool(cr0 & X86_CR0_PG) and not memory.check_range(cr3 & _CR3_ROOT_MASK, 4096)

# Exit decoding straight from the kvm_run bytes (linux/kvm.h), cheaper than ctypes
# attribute access on the hot path: exit_reason at offset 8, the exit union at 32.
_EXIT_REASON = struct.Struct("<I")
_EXIT_REASON_OFFSET = S.kvm_run.exit_reason.offset
_EXIT_UNION_OFFSET = S.kvm_run.io.offset
#: struct kvm_run.io: direction u8, size u8, port u16, count u32, data_offset u64.
_IO = struct.Struct("<BBHIQ")
#: struct kvm_run.mmio: phys_addr u64, data[8], len u32, is_write u8.
_MMIO = struct.Struct("<Q8sIB")
_MMIO_DATA_OFFSET = _EXIT_UNION_OFFSET + 8


class VcpuGate:
    """Shared run/pause/stop state of all vCPUs of one VM."""

    def __init__(self) -> None:
        self.running = threading.Event()
        self.running.set()
        self.stopping = threading.Event()
        #: Open: the vCPUs may enter the guest. ``Vmm.start(hold=True)`` closes it until every
        #: thread of the process is confined (:meth:`firelet.vstate.vmm.Vmm.confine_and_release`).
        self.entry = threading.Event()
        self.entry.set()
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
        memory: GuestRam | None = None,
    ) -> None:
        self.index = index
        #: Guest RAM, to judge the state a triple fault leaves (see :meth:`describe_state`).
        self.memory = memory
        self.fd = fd
        self.io_bus = io_bus
        self.mmio_bus = mmio_bus
        self.gate = gate
        self.on_exit = on_exit
        #: The VM's ``vcpu`` metrics group (its own, if none is given).
        self.metrics = metrics if metrics is not None else Area()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name=threads.vcpu(self.index), daemon=True)
        self.thread.start()

    def kick(self) -> None:
        """Make this vCPU leave ``KVM_RUN`` as soon as possible (from any thread)."""
        self.fd.set_immediate_exit(True)
        if self.thread is not None and self.thread.ident is not None and self.thread.is_alive():
            from firelet.kvm import kick_thread

            kick_thread(self.thread.ident)

    def _run(self) -> None:
        try:
            seccomp.confine("vcpu")  # first: nothing below runs unconfined in a confining process
            self.gate.entry.wait()
            if self.gate.stopping.is_set():  # the VM ended before its guest ran
                return
            self._loop()
        except Exception as exc:  # a VMM bug in exit handling: end the VM, keep the trace in the log
            self.metrics.failures += 1
            log.debug("vCPU %d failed", self.index, exc_info=True)  # the trace is for developers
            self.on_exit(VmExit(ExitKind.VMM_ERROR, f"vCPU {self.index}: {type(exc).__name__}: {exc}"))

    def _loop(self) -> None:
        gate = self.gate
        fd = self.fd
        run = fd.run_struct
        view = fd.run_view
        view_len = len(view)
        io_bus, mmio_bus, metrics = self.io_bus, self.mmio_bus, self.metrics
        unpack_reason, unpack_io, unpack_mmio = _EXIT_REASON.unpack_from, _IO.unpack_from, _MMIO.unpack_from
        enter = fd.run
        # Pausing and stopping always kick the vCPU (immediate_exit + a signal), which makes
        # KVM_RUN return "interrupted": the gate is only consulted then, not on every exit.
        while True:
            if not enter():
                fd.set_immediate_exit(False)
                if gate.stopping.is_set():
                    if log.isEnabledFor(DEBUG):
                        log.debug("vCPU %d stopped: %s", self.index, self.describe_state())
                    return
                if not gate.running.is_set():
                    gate.park()
                continue
            reason = unpack_reason(view, _EXIT_REASON_OFFSET)[0]
            if reason == S.KVM_EXIT_IO:
                direction, size, port, count, offset = unpack_io(view, _EXIT_UNION_OFFSET)
                end = offset + size * count
                if size == 0 or end > view_len:  # KVM's own data, but never trust an offset blindly
                    self.on_exit(VmExit(ExitKind.KVM_ERROR, f"vCPU {self.index}: bad I/O exit data"))
                    return
                if direction == S.KVM_EXIT_IO_OUT:
                    metrics.exit_io_out += 1
                    for i in range(offset, end, size):
                        io_bus.write(port, view[i : i + size])
                else:
                    metrics.exit_io_in += 1
                    for i in range(offset, end, size):
                        io_bus.read(port, view[i : i + size])
                continue
            if reason == S.KVM_EXIT_MMIO:
                addr, _data, length, is_write = unpack_mmio(view, _EXIT_UNION_OFFSET)
                data = view[_MMIO_DATA_OFFSET : _MMIO_DATA_OFFSET + min(length, 8)]
                if is_write:
                    metrics.exit_mmio_write += 1
                    mmio_bus.write(addr, data)
                else:
                    metrics.exit_mmio_read += 1
                    mmio_bus.read(addr, data)
                continue
            metrics.add(f"exit_{S.KVM_EXIT_NAMES.get(reason, str(reason))[9:].lower()}")
            outcome = self._classify(run, reason)
            if outcome is not None:
                self.on_exit(outcome)
                return

    def describe_state(self, memory: GuestRam | None = None) -> str:
        """Where the guest is (rip, rsp, cr3, mp_state, pending events): for a stuck guest's report.

        Read it only while the vCPU is out of ``KVM_RUN`` (paused or stopped): KVM holds
        the vCPU's lock while the guest runs. With ``memory``, a page-table root outside
        guest RAM is called out: no guest can run with it, so the state is not the
        guest's own but the host KVM's fault (seen under nested virtualization).
        """
        try:
            regs, sregs = self.fd.get_regs(), self.fd.get_sregs()
            events = self.fd.get_vcpu_events()
            text = (f"rip={regs.rip:#x} rsp={regs.rsp:#x} rflags={regs.rflags:#x} cr3={sregs.cr3:#x} "
                    f"mp_state={self.fd.get_mp_state()} irq_pending={events.interrupt.injected} "
                    f"nmi_pending={events.nmi.pending}")
        except Exception as exc:  # a diagnostic must never fail the stop
            return f"state unavailable ({exc})"
        if memory is not None and impossible_page_table_root(sregs.cr0, sregs.cr3, memory):
            text += f" ({IMPOSSIBLE_STATE}: cr3 is outside guest RAM)"
        return text

    def _classify(self, run, reason: int) -> VmExit | None:
        """Turn an exit that is not device I/O into the VM's outcome (None: keep running)."""
        name = S.KVM_EXIT_NAMES.get(reason, str(reason))
        if reason == S.KVM_EXIT_HLT:
            # With the in-kernel LAPIC, HLT is handled by KVM; reaching here means
            # a halted guest with no way to wake up (e.g. a kernel with no APIC).
            return VmExit(ExitKind.POWER_OFF, f"vCPU {self.index} halted")
        if reason == S.KVM_EXIT_SHUTDOWN:
            # Where it faulted, as QEMU reports it; the nested rig's KVM can fault a guest by
            # handing it the host's state, which describe_state marks (docs/testing.md).
            return VmExit(ExitKind.TRIPLE_FAULT, f"vCPU {self.index}: {self.describe_state(self.memory)}")
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
