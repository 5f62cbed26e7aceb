"""The library face of firelet: boot and drive a microVM from Python.

    from firelet import MicroVM
    from firelet.devtools.images import build_kernel, build_rootfs

    with MicroVM(kernel=build_kernel().vmlinux, rootfs=build_rootfs(), read_only=True, cmd="uname -a") as vm:
        print(vm.wait(timeout=60), vm.console.text())

``MicroVM`` turns its arguments into the same validated configuration the
config file and the API produce, so all three paths build VMs the same way.
A config's ``logger``, ``metrics`` and ``serial`` sections are honoured as
firelet-vmm honours them (:mod:`firelet.outputs`). Each ``MicroVM`` counts in
its own :class:`firelet.metrics.Metrics`, so several in one process stay apart.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from firelet.devices.legacy.console import ConsoleBuffer, FdSink
from firelet.devices.legacy.output import Sink
from firelet.vstate.exits import ExitKind, VmExit

if TYPE_CHECKING:
    from firelet.vstate.vmm import Vmm

PathLike = str | os.PathLike[str]

class MicroVM:
    """One microVM. Build it with keyword arguments, or from a Firecracker-style config."""

    def __init__(
        self,
        kernel: PathLike | None = None,
        *,
        rootfs: PathLike | None = None,
        read_only: bool = False,
        initrd: PathLike | None = None,
        cmdline: str | None = None,
        cmd: str | None = None,
        vcpus: int = 1,
        mem_mib: int = 128,
        drives: list[dict[str, Any]] | None = None,
        network_interfaces: list[dict[str, Any]] | None = None,
        console: Sink | None = None,
        tee: Sink | None = None,
        interactive: bool = False,
        config: Any = None,
        kvm_path: str = "/dev/kvm",
        boot_timer: bool | Callable[[str], None] = False,
    ) -> None:
        """Describe a microVM (nothing is built until :meth:`start`).

        ``drives`` and ``network_interfaces`` are Firecracker's objects (``{"iface_id": "eth0",
        "host_dev_name": "tap0"}``: the TAP must exist, in this process's network namespace).
        ``cmd`` runs a shell command in firelet's guest image (its init reads it
        from the command line); ``console`` is where serial output goes (default:
        kept in :attr:`console`, a :class:`ConsoleBuffer`, also written to ``tee``).
        ``boot_timer`` adds Firecracker's boot timer (the guest writes 123 to
        0xd0000000 when it has booted): its ``Guest-boot-time`` line goes to the log,
        or to this callable; :attr:`boot_times` holds the times.
        """
        from firelet.config.model import VmConfig, convert

        if config is None:
            if kernel is None:
                raise TypeError("MicroVM needs a kernel (or a config)")
            from firelet.builder.boot import DEFAULT_BOOT_ARGS

            args = cmdline if cmdline is not None else DEFAULT_BOOT_ARGS
            if cmd is not None:
                from firelet.guest import guest_cmdline_for

                args = f"{args} {guest_cmdline_for(cmd)}"
            all_drives = []
            if rootfs is not None:
                all_drives.append(
                    {"drive_id": "rootfs", "path_on_host": os.fspath(rootfs), "is_root_device": True,
                     "is_read_only": read_only}
                )
            all_drives.extend(drives or [])
            boot: dict[str, Any] = {"kernel_image_path": os.fspath(kernel), "boot_args": args}
            if initrd is not None:
                boot["initrd_path"] = os.fspath(initrd)
            config = convert(
                {
                    "boot-source": boot,
                    "drives": all_drives,
                    "network-interfaces": network_interfaces or [],
                    "machine-config": {"vcpu_count": vcpus, "mem_size_mib": mem_mib},
                },
                VmConfig,
            )
        from firelet.metrics import Metrics
        from firelet.outputs import plan_outputs

        self.config = config
        #: What the config's logger/metrics/serial sections ask for (refused here if impossible).
        self._outputs_plan = plan_outputs(config, console_given=console is not None)
        self._outputs: Any = None
        #: Where serial output goes: ``console``, a ConsoleBuffer, or (with the config's
        #: ``serial_out_path``) the sink writing to that path once started.
        self.console: Any = console
        if console is None and self._outputs_plan.serial_out_path is None:
            self.console = ConsoleBuffer(tee=tee)
        self._metrics = Metrics()
        self._interactive = interactive
        self._kvm_path = kvm_path
        self._boot_timer = boot_timer
        self.vmm: Vmm | None = None

    @classmethod
    def from_config_file(cls, path: PathLike, **kwargs: Any) -> MicroVM:
        from firelet.config.files import load_config_file

        return cls(config=load_config_file(path), **kwargs)

    def start(self) -> MicroVM:
        """Build the VM and start its vCPUs; returns at once (the guest boots in the background)."""
        from firelet.builder.boot import ConsoleSpec, build_vmm
        from firelet.outputs import open_outputs

        if self.vmm is not None:
            raise RuntimeError("this MicroVM was already started")
        self._outputs = open_outputs(self._outputs_plan, self._metrics)
        if self._outputs.console is not None:
            self.console = self._outputs.console
        spec = ConsoleSpec(self.console, input_fd=0 if self._interactive else None)
        timer = None
        if self._boot_timer:
            from firelet.devices.pseudo.boot_timer import BootTimer, Timestamp
            from firelet.log import get_logger

            report = self._boot_timer if callable(self._boot_timer) else get_logger(__name__).info
            timer = BootTimer(Timestamp.now(), report)  # counted from the start request, as Firecracker does
        try:
            self.vmm = build_vmm(self.config, spec, kvm_path=self._kvm_path, boot_timer=timer,
                                 metrics=self._metrics)
        except BaseException:
            self._outputs.close()
            raise
        self.vmm.start()
        return self

    @property
    def metrics(self) -> dict[str, dict[str, int]]:
        """This VM's counters now, by Firecracker's metric groups (``block``, ``uart``, ``vcpu``, ...).

        Cumulative since the VM was made (a metrics file gets the changes between lines).
        """
        return self._metrics.totals()

    @property
    def boot_times(self) -> list[tuple[int, int]]:
        """With ``boot_timer``: each boot-complete signal's ``(wall µs, CPU µs)`` since :meth:`start`."""
        from firelet.devices.pseudo.boot_timer import BootTimer

        timer = self.vmm.devices.get(BootTimer) if self.vmm is not None else None
        return list(timer.boot_times) if timer is not None else []

    def wait(self, timeout: float | None = None) -> VmExit:
        """Wait for the guest to end; on timeout the VM is stopped and the outcome says so."""
        vmm = self._running()
        outcome = vmm.wait(timeout)
        if outcome is None:
            vmm.finish(VmExit(ExitKind.TIMEOUT, f"no end within {timeout} s"))
            outcome = vmm.exit
        assert outcome is not None
        return outcome

    def wait_for_console(self, pattern: str, timeout: float) -> str | None:
        """Wait until the console output matches the regex ``pattern``; returns the match."""
        if not isinstance(self.console, ConsoleBuffer):
            raise RuntimeError("console output is not captured (a custom console sink was given)")
        match = self.console.wait_for(pattern, timeout)
        return match.group(0) if match else None

    def pause(self) -> None:
        self._running().pause()

    def resume(self) -> None:
        self._running().resume()

    def send_ctrl_alt_del(self) -> None:
        vmm = self._running()
        from firelet.devices.legacy.i8042 import I8042

        i8042 = vmm.devices.get(I8042)
        if i8042 is None:
            raise RuntimeError("this MicroVM has no i8042 keyboard controller to send Ctrl-Alt-Del to")
        vmm.event_loop.call_soon(i8042.trigger_ctrl_alt_del)

    def stop(self) -> None:
        if self.vmm is not None:
            self.vmm.stop()

    def close(self) -> None:
        """Stop the VM if it runs and release everything it holds (disk data is flushed)."""
        if self.vmm is not None:
            self.vmm.stop()
            self.vmm.close()
        if self._outputs is not None:  # after the VM: the last metrics line has its final counts
            self._outputs.close()
            self._outputs = None

    def _running(self):
        if self.vmm is None:
            raise RuntimeError("the MicroVM has not been started")
        return self.vmm

    def __enter__(self) -> MicroVM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def stdout_sink() -> FdSink:
    """A sink writing straight to the process's stdout, unbuffered."""
    return FdSink(1)
