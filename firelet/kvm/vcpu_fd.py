"""A KVM vCPU fd: ``KVM_RUN``, the shared ``kvm_run`` page, register state, and kicks.

Running: :meth:`VcpuFd.run` issues ``KVM_RUN`` through ``fcntl.ioctl``, which
releases the GIL, so each vCPU runs in its own Python thread in parallel. It
returns True when KVM stopped with an exit for the VMM to handle
(``run_struct.exit_reason``), and False when the run was interrupted: a signal
arrived (EINTR) or ``immediate_exit`` was set, or KVM asked for a retry
(EAGAIN). On False the VMM looks at why it was kicked and calls ``run()``
again; it must clear ``immediate_exit`` first or the next run returns at once.

Kicking a vCPU out of ``KVM_RUN`` from another thread (``kick_thread``):
1. set ``immediate_exit = 1`` in its ``kvm_run``: a vCPU about to enter
   ``KVM_RUN`` (or still in Python between runs) returns at once with EINTR;
2. send :data:`KICK_SIGNAL` to its thread with ``signal.pthread_kill``: a
   vCPU inside ``KVM_RUN`` leaves the guest and returns EINTR.
The signal needs a Python handler (any handler: the default action would kill
the process, and an ignored signal would not interrupt), installed once from
the main thread with :func:`install_kick_handler`. Python's ``fcntl.ioctl``
does not retry on EINTR (it raises ``InterruptedError``, which ``run()`` turns
into False); if a future Python retried, step 1 still makes the retry return
at once. Only kick a thread that is alive: ``pthread_kill`` on a finished
thread's id is undefined behaviour.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import signal
from collections.abc import Iterable
from typing import TypeVar

from firelet.kvm import ioctls as K
from firelet.kvm import structs as S
from firelet.kvm._base import KvmError, ioctl, kvm_error

#: The signal that kicks a vCPU thread out of KVM_RUN. A real-time signal, so
#: it never collides with SIGUSR1/2 or terminal signals a VMM may use.
KICK_SIGNAL: int = signal.SIGRTMIN + 1

_MMIO_DATA_OFFSET = S.kvm_run.mmio.offset + S.kvm_run_mmio.data.offset
_S = TypeVar("_S", bound=ctypes.Structure)


def _kick_noop(signum: int, frame: object) -> None:
    """The kick handler: its existence is what makes KVM_RUN return EINTR."""


def install_kick_handler(sig: int = KICK_SIGNAL) -> None:
    """Install the no-op handler for the kick signal (main thread only; idempotent)."""
    signal.signal(sig, _kick_noop)


def kick_thread(thread_id: int, sig: int = KICK_SIGNAL) -> None:
    """Interrupt ``KVM_RUN`` in the (live) thread ``thread_id`` (a ``threading.get_ident()``).

    Set ``immediate_exit`` on that vCPU first (see :meth:`VcpuFd.kick`) so a
    thread not yet inside ``KVM_RUN`` cannot miss the kick.
    """
    signal.pthread_kill(thread_id, sig)


class VcpuFd:
    """One vCPU; owns its fd and the mmap of its ``kvm_run`` area."""

    def __init__(self, fd: int, mmap_size: int) -> None:
        if mmap_size < ctypes.sizeof(S.kvm_run):
            raise KvmError(f"KVM_GET_VCPU_MMAP_SIZE gave {mmap_size} bytes, less than struct kvm_run")
        self.fd = fd
        self._map = mmap.mmap(fd, mmap_size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self._view = memoryview(self._map)
        #: The ``kvm_run`` structure, live over the shared mapping.
        self.run_struct: S.kvm_run = S.kvm_run.from_buffer(self._map)

    def shared_page(self, page: int) -> memoryview | None:
        """Page ``page`` of this vCPU's mapped area (e.g. the VM's coalesced ring), or None if the
        area has no such page. Release the view before :meth:`close`.

        (A second mmap of the vCPU fd for that page would outlive this object, but in the
        nested rig it went with the outer kernel hanging about once in ten boots.)"""
        start = page * mmap.PAGESIZE
        if start + mmap.PAGESIZE > len(self._view):
            return None
        return self._view[start : start + mmap.PAGESIZE]

    # --- running ---
    def run(self) -> bool:
        """KVM_RUN until the next exit: True for an exit to handle, False if interrupted.

        Errors other than EINTR/EAGAIN (e.g. EFAULT for a bad memory slot)
        raise :class:`KvmError`.
        """
        try:
            fcntl.ioctl(self.fd, K.KVM_RUN, 0)
        except OSError as exc:
            if exc.errno in (errno.EINTR, errno.EAGAIN):
                return False
            raise kvm_error(K.KVM_RUN, exc) from exc
        return True

    @property
    def run_view(self) -> memoryview:
        """The whole ``kvm_run`` mapping as bytes, for exit decoding without ctypes objects."""
        return self._view

    @property
    def exit_reason(self) -> int:
        return self.run_struct.exit_reason

    def set_immediate_exit(self, value: bool) -> None:
        """Make the next (or current, with a signal) KVM_RUN return EINTR without running the guest."""
        self.run_struct.immediate_exit = 1 if value else 0

    def kick(self, thread_id: int, sig: int = KICK_SIGNAL) -> None:
        """Make this vCPU's thread ``thread_id`` leave KVM_RUN soon (from any thread)."""
        self.set_immediate_exit(True)
        kick_thread(thread_id, sig)

    def io_data(self) -> memoryview:
        """For KVM_EXIT_IO: the ``size * count`` data bytes (writable: fill them for IN)."""
        io = self.run_struct.io
        start, length = io.data_offset, io.size * io.count
        if start + length > len(self._view):
            raise KvmError(f"KVM_EXIT_IO data at {start}+{length} lies outside the kvm_run area")
        return self._view[start : start + length]

    def mmio_data(self) -> memoryview:
        """For KVM_EXIT_MMIO: ``mmio.len`` data bytes (writable: fill them for a read)."""
        length = min(self.run_struct.mmio.len, 8)
        return self._view[_MMIO_DATA_OFFSET : _MMIO_DATA_OFFSET + length]

    # --- register state ---
    def _get(self, request: int, struct: _S) -> _S:
        ioctl(self.fd, request, struct)
        return struct

    def get_regs(self) -> S.kvm_regs:
        return self._get(K.KVM_GET_REGS, S.kvm_regs())

    def set_regs(self, regs: S.kvm_regs) -> None:
        ioctl(self.fd, K.KVM_SET_REGS, regs)

    def get_sregs(self) -> S.kvm_sregs:
        return self._get(K.KVM_GET_SREGS, S.kvm_sregs())

    def set_sregs(self, sregs: S.kvm_sregs) -> None:
        ioctl(self.fd, K.KVM_SET_SREGS, sregs)

    def get_fpu(self) -> S.kvm_fpu:
        """KVM_GET_FPU; the kernel leaves ``mxcsr`` zero here (use get_xsave for it)."""
        return self._get(K.KVM_GET_FPU, S.kvm_fpu())

    def set_fpu(self, fpu: S.kvm_fpu) -> None:
        ioctl(self.fd, K.KVM_SET_FPU, fpu)

    def get_msrs(self, indices: Iterable[int]) -> list[tuple[int, int]]:
        """KVM_GET_MSRS: ``(index, value)`` for each index; an unreadable MSR is a KvmError."""
        msrs = S.make_kvm_msrs((index, 0) for index in indices)
        done = ioctl(self.fd, K.KVM_GET_MSRS, msrs)
        if done < msrs.nmsrs:
            raise KvmError(f"KVM_GET_MSRS could not read MSR {msrs.entries[done].index:#x}", request="KVM_GET_MSRS")
        return [(e.index, e.data) for e in msrs.entries]

    def set_msrs(self, entries: Iterable[tuple[int, int]]) -> None:
        """KVM_SET_MSRS from ``(index, value)`` pairs; an MSR KVM refuses is a KvmError."""
        msrs = S.make_kvm_msrs(entries)
        done = ioctl(self.fd, K.KVM_SET_MSRS, msrs)
        if done < msrs.nmsrs:
            e = msrs.entries[done]
            raise KvmError(f"KVM_SET_MSRS refused MSR {e.index:#x} = {e.data:#x}", request="KVM_SET_MSRS")

    def get_cpuid2(self, max_entries: int = 256) -> ctypes.Structure:
        """KVM_GET_CPUID2: the CPUID table last set, trimmed to its entries."""
        cpuid = S.make_kvm_cpuid2(max_entries)
        ioctl(self.fd, K.KVM_GET_CPUID2, cpuid)
        return S.make_kvm_cpuid2(cpuid.entries[: cpuid.nent])

    def set_cpuid2(self, cpuid: ctypes.Structure) -> None:
        """KVM_SET_CPUID2 with a ``kvm_cpuid2`` from :func:`~firelet.kvm.structs.make_kvm_cpuid2`."""
        ioctl(self.fd, K.KVM_SET_CPUID2, cpuid)

    def get_lapic(self) -> S.kvm_lapic_state:
        return self._get(K.KVM_GET_LAPIC, S.kvm_lapic_state())

    def set_lapic(self, lapic: S.kvm_lapic_state) -> None:
        ioctl(self.fd, K.KVM_SET_LAPIC, lapic)

    def get_xcrs(self) -> S.kvm_xcrs:
        return self._get(K.KVM_GET_XCRS, S.kvm_xcrs())

    def set_xcrs(self, xcrs: S.kvm_xcrs) -> None:
        ioctl(self.fd, K.KVM_SET_XCRS, xcrs)

    def get_xsave(self) -> S.kvm_xsave:
        return self._get(K.KVM_GET_XSAVE, S.kvm_xsave())

    def set_xsave(self, xsave: S.kvm_xsave) -> None:
        ioctl(self.fd, K.KVM_SET_XSAVE, xsave)

    def get_vcpu_events(self) -> S.kvm_vcpu_events:
        return self._get(K.KVM_GET_VCPU_EVENTS, S.kvm_vcpu_events())

    def set_vcpu_events(self, events: S.kvm_vcpu_events) -> None:
        ioctl(self.fd, K.KVM_SET_VCPU_EVENTS, events)

    def get_debugregs(self) -> S.kvm_debugregs:
        return self._get(K.KVM_GET_DEBUGREGS, S.kvm_debugregs())

    def set_debugregs(self, debugregs: S.kvm_debugregs) -> None:
        ioctl(self.fd, K.KVM_SET_DEBUGREGS, debugregs)

    def get_mp_state(self) -> int:
        """KVM_GET_MP_STATE as a ``KVM_MP_STATE_*`` number."""
        return self._get(K.KVM_GET_MP_STATE, S.kvm_mp_state()).mp_state

    def set_mp_state(self, mp_state: int) -> None:
        ioctl(self.fd, K.KVM_SET_MP_STATE, S.kvm_mp_state(mp_state=mp_state))

    def get_tsc_khz(self) -> int:
        return ioctl(self.fd, K.KVM_GET_TSC_KHZ)

    def nmi(self) -> None:
        """KVM_NMI: queue an NMI (only without an in-kernel LAPIC, or to its LINT1)."""
        ioctl(self.fd, K.KVM_NMI)

    def kvmclock_ctrl(self) -> None:
        """KVM_KVMCLOCK_CTRL: tell a paused guest's kvmclock not to report a soft lockup.

        Fails with EINVAL when the guest has not enabled kvmclock.
        """
        ioctl(self.fd, K.KVM_KVMCLOCK_CTRL)

    def close(self) -> None:
        """Unmap ``kvm_run`` and close the fd; views from io_data()/mmio_data() must be gone."""
        if self.fd < 0:
            return
        os.close(self.fd)
        self.fd = -1
        del self.run_struct
        self._view.release()
        try:
            self._map.close()
        except BufferError:  # a view is still held somewhere: unmapped when it is collected
            pass

    def __enter__(self) -> VcpuFd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
