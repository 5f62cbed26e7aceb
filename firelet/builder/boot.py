"""From a validated :class:`~firelet.config.model.VmConfig` to a ready :class:`Vmm`.

The one place where KVM objects, guest memory, the boot structures and the
devices meet. Order matters and follows KVM's rules: the irqchip exists before
vCPUs; memory slots and the PIT exist before a vCPU runs; CPUID is set before
the MSRs and registers; the LAPIC's LINT pins are programmed after the irqchip.
Inputs are checked up front so a bad path or size fails with one line before
any KVM object is made. Work that waits (the kernel read, KVM calls that wait
out a grace period) runs on helper threads meanwhile. The devices, planned and
made through the registered device kinds (:mod:`firelet.builder.registry`), all
exist and are wired before any vCPU exists.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from firelet.arch.x86_64 import layout
from firelet.builder.spec import BuildInputs
from firelet.builder.spec import ConsoleSpec as ConsoleSpec  # callers make theirs from here
from firelet.config.model import VmConfig, check_startable
from firelet.devices.legacy.console import NullSink
from firelet.errors import FireletError, UsageError
from firelet.log import get_logger

if TYPE_CHECKING:  # pragma: no cover - imported by build_vmm once the kernel is loading
    from firelet.builder.spec import DeviceKinds
    from firelet.devices.pseudo.boot_timer import BootTimer
    from firelet.events.loop import EventLoop
    from firelet.metrics import Metrics
    from firelet.vstate.vmm import Vmm

log = get_logger(__name__)

#: What Firecracker boots with when no boot_args are given, plus a console on ttyS0.
DEFAULT_BOOT_ARGS = (
    "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd"
)

#: Enter ELF kernels with a PVH note through PVH (as Firecracker does). Off: in the nested
#: test rig it boots no faster than the 64-bit entry (quiet boot, 4 runs each: 2752 vs
#: 2572 ms median), and SMP PVH boots were once seen to triple-fault there.
PREFER_PVH = False
#: Let KVM queue the UART's THR writes while its THRE interrupt is off (coalesced port I/O):
#: a kernel boot log then costs one exit per byte (the LSR poll) instead of two. In the rig
#: a boot with the kernel log on the console went from 8.4 s to 4.9 s to READY.
COALESCE_SERIAL_OUTPUT = True
#: Advertise KVM's TSC-deadline LAPIC timer (as QEMU's ``-cpu host`` does): Linux then skips
#: calibrating the LAPIC timer against the PIT, ~0.2 s of a boot in the rig.
ADVERTISE_TSC_DEADLINE = True
#: Back guest RAM with transparent huge pages, 2 MiB-aligned, as QEMU does: fewer and larger
#: nested-paging entries and page faults. On hosts whose THP mode is "madvise" (Debian's, this
#: machine's) nothing else gets guest RAM huge pages. RSS grows in 2 MiB steps: an idle
#: 128 MiB guest measured 47 MiB RSS (30 MiB of it huge pages) in the rig, as before.
TRANSPARENT_HUGE_PAGES = True


class BuildError(FireletError):
    """The microVM could not be built from its configuration."""


def _check_file(what: str, path: str | None, *, writable: bool = False) -> str:
    if not path:
        raise UsageError(f"{what}: no path given")
    if not os.path.exists(path):
        raise UsageError(f"{what} {path}: no such file")
    if not os.path.isfile(path):
        raise UsageError(f"{what} {path}: not a regular file")
    mode = os.R_OK | (os.W_OK if writable else 0)
    if not os.access(path, mode):
        need = "read and write" if writable else "read"
        raise UsageError(f"{what} {path}: permission denied (firelet needs to {need} it)")
    return path


def unsupported_parts(config: VmConfig) -> list[str]:
    """What the configuration asks for that firelet cannot do yet (refused, never silently ignored)."""
    from firelet.config.support import unsupported

    return [part.where for part in unsupported(config)]


def check_inputs(config: VmConfig) -> None:
    """Fail early, with one line, on anything a person must fix before booting."""
    check_startable(config)
    unsupported = unsupported_parts(config)
    if unsupported:
        raise UsageError(
            f"not supported by firelet yet: {', '.join(unsupported)}; remove them from the configuration"
        )
    assert config.boot_source is not None
    _check_file("kernel", config.boot_source.kernel_image_path)
    if config.boot_source.initrd_path:
        _check_file("initrd", config.boot_source.initrd_path)
    for drive in config.drives:
        _check_file(f"drive {drive.drive_id}: image", drive.path_on_host, writable=not drive.is_read_only)


def boot_cmdline(config: VmConfig, device_args: list[str]) -> str:
    """The guest command line: the user's (or the default), root device, then device announcements."""
    assert config.boot_source is not None
    args = config.boot_source.boot_args
    parts = [args if args is not None else DEFAULT_BOOT_ARGS]
    root = next((d for d in config.drives if d.is_root_device), None)
    words = cmdline_words(parts[0]) if parts[0] else []
    if root is not None and not any(w.startswith("root=") for w in words):
        # As Firecracker: the root drive is the first virtio-blk device, /dev/vda.
        target = f"PARTUUID={root.partuuid}" if root.partuuid else "/dev/vda"
        parts.append(f"root={target} {'ro' if root.is_read_only else 'rw'}")
    parts.extend(device_args)
    return " ".join(p for p in parts if p)


def cmdline_words(cmdline: str) -> list[str]:
    """The words of a kernel command line as Linux splits it (lib/cmdline.c, ``next_arg``):
    at whitespace outside double quotes, the quotes removed. (shlex would also honour single
    quotes and backslashes, which the kernel does not.)"""
    words: list[str] = []
    word: list[str] = []
    quoted = False
    for ch in cmdline:
        if ch == '"':
            quoted = not quoted
        elif ch.isspace() and not quoted:
            if word:
                words.append("".join(word))
                word = []
        else:
            word.append(ch)
    if word:
        words.append("".join(word))
    return words


def build_vmm(
    config: VmConfig,
    console: ConsoleSpec | None = None,
    *,
    kvm_path: str = "/dev/kvm",
    event_loop: EventLoop | None = None,
    boot_timer: BootTimer | None = None,
    metrics: Metrics | None = None,
    kinds: DeviceKinds | None = None,
) -> Vmm:
    """Build every part of the microVM; the returned :class:`Vmm` is ready to ``start()``.

    ``boot_timer``: Firecracker's ``--boot-timer`` device, in the first MMIO window.
    ``metrics``: the VM's counters (a new :class:`~firelet.metrics.Metrics` if not given;
    firelet-vmm passes the one its API already counts in).
    ``kinds``: the device kinds to plan from (default: :data:`firelet.builder.registry.DEVICE_KINDS`).
    """
    from firelet.arch.x86_64.ram import guest_ram

    check_inputs(config)
    machine = config.machine_config
    console = console or ConsoleSpec(NullSink())

    # THP is used for "None" too (TRANSPARENT_HUGE_PAGES), so "Transparent" needs nothing more.
    memory = guest_ram(machine.mem_size_mib * layout.MiB, huge_pages=machine.huge_pages == "2M",
                                  transparent_huge_pages=TRANSPARENT_HUGE_PAGES)
    closers: list[Callable[[], None]] = [memory.close]  # unmapped last (closers run in reverse)
    # Reading the kernel (and initrd) into guest RAM is the longest step of a build (copies
    # and page faults, with the GIL released): it starts first, on a helper thread, while this
    # one imports the KVM bindings and sets up the VM and its devices. In the rig it took
    # ~0.25 s and had kept the vCPU waiting ~0.15 s when it started after KVM_CREATE_VM.
    loading = _Background(lambda: _read_images(memory, config))
    waits: Any = None
    try:
        from firelet.events.loop import EventLoop
        from firelet.kvm import Kvm, install_kick_handler
        from firelet.kvm.ioctls import KVM_CAP_COALESCED_PIO
        from firelet.vstate.vcpu import VcpuGate
        from firelet.vstate.vmm import Vmm, VmmResources

        kvm = Kvm(kvm_path)
        closers.append(kvm.close)
        vm_fd = kvm.create_vm()
        closers.append(vm_fd.close)
        from firelet.builder.kernel_waits import KernelWaits

        resources = VmmResources(kvm, vm_fd, memory, closers)
        waits = KernelWaits()
        _setup_vm(vm_fd, memory, waits, track_dirty_pages=machine.track_dirty_pages)
        loop = event_loop if event_loop is not None else EventLoop()
        closers.append(loop.close)
        gate = VcpuGate()
        vmm = Vmm(resources, loop, gate, metrics)
        if COALESCE_SERIAL_OUTPUT and vm_fd.check_extension(KVM_CAP_COALESCED_PIO) > 0:
            from firelet.vstate.coalesced import CoalescedRing

            vmm.coalesced_ring = CoalescedRing()
        from firelet.builder.device_manager import attach_devices, device_cmdline, plan_devices
        from firelet.builder.registry import DEVICE_KINDS

        plan = plan_devices(BuildInputs(config, console, boot_timer), DEVICE_KINDS if kinds is None else kinds)
        # The devices are made before any vCPU exists, their KVM registrations (irqfds,
        # ioeventfds, the UART's coalesced zone) queued after the irqchip on the helper
        # thread. (Making them as the vCPUs started, a vCPU waiting at its first access to
        # a device still to come, measured no faster in the rig, and 4-vCPU boots under it
        # hung the rig's kernel twice.)
        attach_devices(vmm, plan, later=waits.add)
        cmdline = boot_cmdline(config, device_cmdline(plan))
        kernel, initrd = loading.result()
        _load_guest(vmm, config, cmdline, kernel, initrd)
        _ensure_kick_handler(install_kick_handler)
        waits.finish()  # every KVM registration, and memory and PIT, before any vCPU exists
        _create_vcpus(vmm, kvm, vm_fd, machine.vcpu_count)
        _count_device_metrics(vmm)  # last: a failed build leaves the metrics as they were
        return vmm
    except BaseException:
        loading.join()  # it writes into guest RAM, which the closers unmap
        if waits is not None:
            waits.join()  # its calls use the fds the closers close
        for closer in reversed(closers):
            if event_loop is not None and closer == event_loop.close:
                continue  # the caller's loop (the controller's, running this very build) stays open
            try:
                closer()
            except Exception:
                log.debug("cleanup after a failed build", exc_info=True)
        raise


def _count_device_metrics(vmm: Vmm) -> None:
    """Every reading of the VM's metrics first folds in the counters its devices keep."""
    from firelet.vstate.device_metrics import fold_device_metrics

    devices, metrics = vmm.devices, vmm.metrics
    metrics.add_source(lambda: fold_device_metrics(devices, metrics))


def _ensure_kick_handler(install: Callable[[], None]) -> None:
    """Pausing and stopping vCPUs needs the kick signal's handler, installable only from the main thread."""
    import signal
    import threading

    from firelet.kvm import KICK_SIGNAL

    if threading.current_thread() is threading.main_thread():
        install()
    elif signal.getsignal(KICK_SIGNAL) in (signal.SIG_DFL, signal.SIG_IGN, None):
        raise BuildError(
            "the vCPU kick handler is not installed: call firelet.kvm.install_kick_handler() "
            "from the main thread before building a VM from another thread"
        )


def _setup_vm(vm_fd: Any, memory: Any, waits: Any, *, track_dirty_pages: bool = False) -> None:
    from firelet.memory.dirty import slot_flags

    vm_fd.set_tss_addr(layout.KVM_TSS_START)
    vm_fd.set_identity_map_addr(layout.KVM_IDENTITY_MAP_START)
    waits.add(vm_fd.create_irqchip)  # before the vCPUs are made (the builder waits for it)
    flags = slot_flags(track_dirty_pages)  # slot i is memory.regions[i] (firelet.memory.dirty)
    for slot, region in enumerate(memory.regions):  # needed only once a vCPU runs
        waits.add(partial(vm_fd.set_user_memory_region, slot, region.guest_addr, region.size, region.host_addr,
                          flags))
    waits.add(vm_fd.create_pit2)


class _Background:
    """Run ``fn`` on a helper thread; :meth:`result` joins it and re-raises what it raised."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        import threading

        from firelet import threads

        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), name=threads.LOADER, daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self._value = fn()
        except BaseException as exc:  # handed to the caller by result()
            self._error = exc

    def join(self) -> None:
        self._thread.join()

    def result(self) -> Any:
        self.join()
        if self._error is not None:
            raise self._error
        return self._value


def _read_images(mem: Any, config: VmConfig) -> tuple[Any, tuple[int, int] | None]:
    """Load the kernel, and the initrd if any, into guest RAM: ``(KernelImage, (addr, size) | None)``."""
    from firelet.arch.x86_64 import loader

    assert config.boot_source is not None
    kernel = loader.load_kernel(mem, config.boot_source.kernel_image_path, fresh_memory=True)
    initrd = None
    if config.boot_source.initrd_path:
        initrd = loader.load_initrd(mem, config.boot_source.initrd_path, kernel)
    return kernel, initrd


def _load_guest(vmm: Vmm, config: VmConfig, cmdline: str, kernel: Any, initrd: tuple[int, int] | None) -> None:
    """Write the command line and boot structures for the loaded ``kernel``; choose the entry."""
    from firelet.arch.x86_64 import bootparams, loader, mptable

    assert config.boot_source is not None
    mem = vmm.memory
    loader.write_cmdline(mem, cmdline, kernel=kernel)
    if kernel.kind == "elf" and kernel.pvh_entry is not None and PREFER_PVH:
        # As Firecracker: an ELF kernel with a PVH note is entered in 32-bit protected mode
        # with the hvm_start_info structure (xen/include/public/arch-x86/hvm/start_info.h).
        from firelet.arch.x86_64 import pvh

        vmm.boot_mode, vmm.entry = "pvh", kernel.pvh_entry
        vmm.start_info = pvh.write_pvh_start_info(mem, layout.CMDLINE_START, initrd, kernel=kernel)
    else:  # the 64-bit boot protocol, with the zero page (boot.rst, "64-bit BOOT PROTOCOL")
        vmm.boot_mode, vmm.entry = "long", kernel.entry
        bootparams.write_boot_params(mem, kernel, len(cmdline.encode()) + 1, initrd)
    mptable.write_mptable(mem, config.machine_config.vcpu_count)
    vmm.kernel = kernel
    vmm.cmdline = cmdline
    log.info("kernel %s loaded, %s entry %#x; cmdline: %s",
             config.boot_source.kernel_image_path, vmm.boot_mode, vmm.entry, cmdline)


def _create_vcpus(vmm: Vmm, kvm: Any, vm_fd: Any, count: int) -> None:
    from firelet.arch.x86_64 import cpuid, regs
    from firelet.vstate.vcpu import Vcpu

    mem = vmm.memory
    from firelet.kvm.ioctls import KVM_CAP_COALESCED_MMIO, KVM_CAP_TSC_DEADLINE_TIMER

    supported = kvm.supported_cpuid()
    tsc_deadline = ADVERTISE_TSC_DEADLINE and kvm.check_extension(KVM_CAP_TSC_DEADLINE_TIMER) > 0
    mode = vmm.boot_mode
    cr3 = regs.setup_page_tables(mem) if mode == "long" else None
    io_bus = vmm.io_bus
    mmio_bus = vmm.mmio_bus
    for index in range(count):
        fd = vm_fd.create_vcpu(index)
        vmm.resources.closers.append(fd.close)
        if index == 0 and vmm.coalesced_ring is not None:  # the ring page is in every vCPU's area
            vmm.coalesced_ring.attach(fd.shared_page(vm_fd.check_extension(KVM_CAP_COALESCED_MMIO)))
            vmm.resources.closers.append(vmm.coalesced_ring.close)  # before fd.close (reverse order)
        fd.set_cpuid2(cpuid.build_cpuid(supported, index, count, tsc_deadline=tsc_deadline))
        fd.set_msrs(regs.boot_msrs())
        if index == 0:
            fd.set_regs(regs.boot_regs(vmm.entry, mode=mode, start_info=vmm.start_info))
            sregs = fd.get_sregs()
            regs.boot_sregs(sregs, mem, mode=mode, cr3=cr3)
            fd.set_sregs(sregs)
            fd.set_fpu(regs.boot_fpu())
        lapic = fd.get_lapic()
        regs.set_lapic_lint(lapic)
        fd.set_lapic(lapic)
        vmm.vcpus.append(Vcpu(index, fd, io_bus, mmio_bus, vmm.gate, vmm.finish, vmm.metrics.vcpu))
