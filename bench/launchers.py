"""The VMMs the yardstick boots: one small class per VMM.

A launcher knows the argv that boots a given kernel, root image and kernel
command line with console on stdout, and how to end the VM if it does not
end itself. Every figure in the report is also given as a ratio against
:class:`QemuMicrovm` measured in the same run, so add new VMMs to
:data:`LAUNCHERS` after it.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BootInputs:
    """What every VMM boots: the same kernel, a private copy of the same root, one command line."""

    vmlinux: Path
    rootfs: Path
    cmdline: str
    mem_mib: int = 128
    vcpus: int = 1
    #: Extra raw images, attached read-write after the root one (bench/disk.py's data drive).
    drives: tuple[Path, ...] = ()
    #: One network interface, (host TAP name, guest MAC), virtio-net over virtio-mmio (bench/net.py).
    net: tuple[str, str] | None = None


class Launcher:
    """Base class: override ``name``, ``argv`` and, if needed, ``stop``."""

    name = "?"

    def available(self) -> str | None:
        """None when this VMM can run here, else why not (reported, not raised)."""
        return None

    def argv(self, boot: BootInputs) -> list[str]:
        raise NotImplementedError

    def kernel_cmdline(self, base: str) -> str:
        """The guest command line this VMM needs, from the common one."""
        return base

    def stop(self, proc: subprocess.Popen[bytes], grace: float) -> bool:
        """Let the guest's own reboot end the VMM within ``grace`` s; kill it otherwise.

        Returns True when the VMM exited by itself (a clean end).
        """
        try:
            proc.wait(timeout=grace)
            return True
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return False


class QemuMicrovm(Launcher):
    """QEMU's ``microvm`` machine: the reference every other VMM is measured against."""

    name = "qemu-microvm"
    binary = "qemu-system-x86_64"

    def __init__(self, *, vhost: bool = False) -> None:
        #: Whether a network interface moves its packets in the host kernel (vhost-net) or in QEMU.
        self.vhost = vhost
        if vhost:
            self.name = "qemu-microvm vhost=on"

    def available(self) -> str | None:
        if not shutil.which(self.binary):
            return f"{self.binary} is missing (apt-get install qemu-system-x86)"
        if self.vhost and not Path("/dev/vhost-net").exists():
            return "no /dev/vhost-net (modprobe vhost_net)"
        return None

    def argv(self, boot: BootInputs) -> list[str]:
        return [
            self.binary,
            # acpi=off: the guest kernel has no ACPI, so QEMU must name the virtio-mmio
            # devices on the command line (virtio_mmio.device=) instead of in a DSDT.
            "-M", "microvm,x-option-roms=off,isa-serial=on,rtc=off,acpi=off",
            "-enable-kvm", "-cpu", "host",
            "-m", str(boot.mem_mib), "-smp", str(boot.vcpus),
            "-nodefaults", "-no-user-config", "-nographic",
            "-serial", "stdio",
            "-kernel", str(boot.vmlinux),
            "-append", self.kernel_cmdline(boot.cmdline),
            "-drive", f"id=root,file={boot.rootfs},format=raw,if=none",
            "-device", "virtio-blk-device,drive=root",
            *[arg for i, path in enumerate(boot.drives) for arg in (
                "-drive", f"id=data{i},file={path},format=raw,if=none", "-device", f"virtio-blk-device,drive=data{i}")],
            *self._net_args(boot),
            "-no-reboot",
        ]

    def _net_args(self, boot: BootInputs) -> list[str]:
        if boot.net is None:
            return []
        tap, mac = boot.net
        vhost = "on" if self.vhost else "off"
        return ["-netdev", f"tap,id=net0,ifname={tap},script=no,downscript=no,vhost={vhost}",
                "-device", f"virtio-net-device,netdev=net0,mac={mac}"]


    def kernel_cmdline(self, base: str) -> str:
        # microvm has no i8042, so reboot=k only halts; a triple fault (reboot=t)
        # resets, and -no-reboot turns the reset into QEMU's exit.
        return base.replace("reboot=k", "reboot=t")


class Firelet(Launcher):
    """firelet's own VMM, started as a user would: the ``firelet`` command beside this Python."""

    name = "firelet"

    def __init__(self, *, vhost: bool = False) -> None:
        #: Whether the network interface is on the host kernel's vhost-net (``--net ...,vhost``).
        self.vhost = vhost
        if vhost:
            self.name = "firelet vhost"

    def available(self) -> str | None:
        if self.vhost and not Path("/dev/vhost-net").exists():
            return "no /dev/vhost-net (modprobe vhost_net)"
        return None

    def command(self) -> list[str]:
        script = Path(sys.executable).parent / "firelet"  # the console script pip installed
        return [str(script)] if script.exists() else [sys.executable, "-m", "firelet"]

    def argv(self, boot: BootInputs) -> list[str]:
        return [
            *self.command(), "run",
            "--kernel", str(boot.vmlinux),
            "--rootfs", str(boot.rootfs),
            "--cmdline", self.kernel_cmdline(boot.cmdline),
            "--vcpus", str(boot.vcpus), "--mem", str(boot.mem_mib),
            *[arg for i, path in enumerate(boot.drives) for arg in ("--drive", f"id=data{i},path={path}")],
            *(["--net", f"tap={boot.net[0]},mac={boot.net[1]}{',vhost' if self.vhost else ''}"]
              if boot.net is not None else []),
        ]


def firelet_vmm_command() -> list[str]:
    """``firelet-vmm`` beside this Python (the console script pip installed), or its module."""
    script = Path(sys.executable).parent / "firelet-vmm"
    return [str(script)] if script.exists() else [sys.executable, "-m", "firelet.cli.vmm"]


# In report order; the first is the reference for the ratios.
LAUNCHERS: list[Launcher] = [QemuMicrovm(), Firelet()]
