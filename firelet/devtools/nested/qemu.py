"""The outer QEMU's command line: a TCG machine with AMD SVM and nested paging.

QEMU's software CPU emulates SVM with NPT, so the outer Linux can load
``kvm-amd`` and offer a hardware-style ``/dev/kvm`` (see
shared/facts/nested-kvm.md). The host root goes in read-only over 9p; each
writable share is one more 9p export.
"""

from __future__ import annotations

from pathlib import Path

from firelet.devtools.nested.init_script import HOST_ROOT_TAG, Share

QEMU_BINARY = "qemu-system-x86_64"
# qboot (from qemu-system-data) jumps straight to a -kernel; SeaBIOS takes seconds under TCG.
QBOOT = Path("/usr/share/qemu/qboot.rom")
# EPYC is a model QEMU's TCG knows that lists svm; npt gives the inner VMs nested paging.
OUTER_CPU = "EPYC,+svm,+npt"

# console on the first 8250; panic=-1 reboots at once and -no-reboot turns that into QEMU's exit.
_BASE_CMDLINE = "console=ttyS0 panic=-1 reboot=k"
# Skip boot work the rig has no use for. tsc=reliable keeps the TSC clocksource (TCG's TSC
# follows the host clock: an 8 s sleep measured 8.181 s inside vs 8.188 s on the host).
_FAST_CMDLINE = "tsc=reliable no_timer_check i8042.noaux i8042.nokbd mitigations=off nokaslr"


def kernel_cmdline(*, verbose: bool) -> str:
    """The outer kernel's command line; quiet unless the boot log is wanted."""
    quiet = "" if verbose else " quiet loglevel=0"
    return f"{_BASE_CMDLINE} {_FAST_CMDLINE}{quiet}"


def _qemu_path(path: str) -> str:
    """A path as a QEMU option value: commas are doubled."""
    return path.replace(",", ",,")


def outer_qemu_argv(*, kernel: Path, initrd: Path, cmdline: str, mem_mib: int, smp: int,
                    shares: list[Share], qemu: str = QEMU_BINARY, bios: Path | None = None,
                    monitor: str | None = None, heartbeat: str | None = None) -> list[str]:
    """The argv that boots the rig; the serial port is QEMU's stdio, without signal keys.

    ``bios`` replaces SeaBIOS (use :data:`QBOOT` with a PVH ``vmlinux`` kernel);
    ``monitor`` is a Unix socket path for QEMU's human monitor (to inspect a stuck rig);
    ``heartbeat`` a file that receives the outer Linux's second serial port (ttyS1).
    """
    argv = [
        qemu,
        "-accel", "tcg,thread=multi",
        "-M", "q35",
        "-cpu", OUTER_CPU,
        "-smp", str(smp),
        "-m", str(mem_mib),
        "-nographic", "-nodefaults", "-no-user-config",
        "-chardev", "stdio,id=s0,signal=off",
        "-serial", "chardev:s0",
        "-kernel", str(kernel),
        "-initrd", str(initrd),
        "-append", cmdline,
        "-no-reboot",
        "-virtfs",
        f"local,path=/,mount_tag={HOST_ROOT_TAG},security_model=none,readonly=on,multidevs=remap",
    ]
    if bios is not None:
        argv += ["-bios", str(bios)]
    if monitor:
        argv += ["-monitor", f"unix:{_qemu_path(monitor)},server=on,wait=off"]
    if heartbeat:
        argv += ["-chardev", f"file,id=hb,path={_qemu_path(heartbeat)}", "-serial", "chardev:hb"]
    for share in shares:
        argv += ["-virtfs",
                 f"local,path={_qemu_path(share.path)},mount_tag={share.tag},"
                 "security_model=none,multidevs=remap"]
    return argv
