"""``firelet run``: boot one microVM in the foreground; its outcome is the exit status."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

from firelet.errors import UsageError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="boot a microVM in the foreground",
        description="Boot a microVM; exit 0 when the guest reboots or powers off, non-zero on a crash.",
    )
    p.add_argument("--config-file", metavar="F", help="a Firecracker JSON configuration file")
    p.add_argument("--kernel", metavar="K", help="guest kernel: vmlinux (ELF) or bzImage")
    p.add_argument("--initrd", metavar="I", help="initial ramdisk (cpio, optionally compressed)")
    p.add_argument("--rootfs", metavar="IMG", help="root filesystem image (raw, e.g. ext4): /dev/vda")
    p.add_argument("--ro", action="store_true", help="attach --rootfs read-only")
    p.add_argument(
        "--drive", action="append", default=[], metavar="id=ID,path=PATH[,ro][,root]",
        help="an extra virtio-blk drive (repeatable)",
    )
    p.add_argument(
        "--net", action="append", default=[], metavar="tap=NAME[,mac=MAC][,id=ID][,vhost]",
        help="a virtio-net interface on the existing TAP NAME (repeatable; ids default to eth0, eth1, ...)",
    )
    p.add_argument("--cmdline", help="kernel command line (default: console=ttyS0 reboot=k panic=1 ...)")
    p.add_argument("--cmd", help="shell command for firelet's guest init to run (firelet.cmd=)")
    p.add_argument("--vcpus", type=int, default=None, help="number of vCPUs, 1..32 (default 1)")
    p.add_argument("--mem", type=int, default=None, metavar="MiB", help="guest memory in MiB (default 128)")
    p.add_argument(
        "--console", default=None, metavar="stdio|file:PATH|none",
        help="where the guest's serial console goes (default stdio, or the config file's serial_out_path)",
    )
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="stop the VM after S seconds")
    p.add_argument("--boot-timer", action="store_true",
                   help="print the guest's boot time when it writes 123 to 0xd0000000 (Firecracker's boot timer)")
    p.add_argument("--kvm-device", default="/dev/kvm", metavar="PATH", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def parse_drive(spec: str) -> dict[str, Any]:
    """``id=data,path=/x.img,ro`` → a Firecracker drive object."""
    drive: dict[str, Any] = {"is_root_device": False, "is_read_only": False}
    for item in spec.split(","):
        key, _, value = item.partition("=")
        if key == "id" and value:
            drive["drive_id"] = value
        elif key == "path" and value:
            drive["path_on_host"] = value
        elif key == "ro" and not value:
            drive["is_read_only"] = True
        elif key == "root" and not value:
            drive["is_root_device"] = True
        else:
            raise UsageError(f"--drive {spec}: unknown item {item!r}; use id=ID,path=PATH[,ro][,root]")
    if "drive_id" not in drive or "path_on_host" not in drive:
        raise UsageError(f"--drive {spec}: needs both id= and path=")
    return drive


def parse_net(spec: str, index: int) -> dict[str, Any]:
    """``tap=tap0,mac=06:00:c0:00:02:02,id=eth0[,vhost]`` → a Firecracker network interface object.

    ``vhost`` is firelet's own: the host kernel's vhost-net moves the frames.

    Without ``id=`` the interface is ``eth<index>``, its place among the --net options
    (and, as the guest names virtio-net devices in order, usually its name there too).
    """
    iface: dict[str, Any] = {}
    keys = {"tap": "host_dev_name", "mac": "guest_mac", "id": "iface_id"}
    for item in spec.split(","):
        key, sep, value = item.partition("=")
        if item == "vhost" and "vhost" not in iface:
            iface["vhost"] = True
            continue
        if key not in keys or not sep or not value or keys[key] in iface:
            raise UsageError(f"--net {spec}: bad item {item!r}; use tap=NAME[,mac=MAC][,id=ID][,vhost]")
        iface[keys[key]] = value
    if "host_dev_name" not in iface:
        raise UsageError(f"--net {spec}: needs tap=NAME, the host TAP device (see `firelet net up`)")
    iface.setdefault("iface_id", f"eth{index}")
    return iface


def _console(spec: str):
    from firelet.cli.terminal import is_interactive
    from firelet.devices.legacy.console import FdSink, NullSink

    if spec == "stdio":
        return FdSink(sys.stdout.fileno()), is_interactive()
    if spec == "none":
        return NullSink(), False
    if spec.startswith("file:") and len(spec) > 5:
        path = spec[5:]
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise UsageError(f"--console {spec}: cannot open {path}: {exc.strerror}") from None
        return FdSink(fd), False
    raise UsageError(f"--console {spec}: expected stdio, file:PATH or none")


def build_microvm(args: argparse.Namespace) -> tuple[Any, bool]:
    """The MicroVM the arguments describe, and whether its console is interactive (:func:`console_for`)."""
    from firelet.config.files import load_config_file
    from firelet.microvm import MicroVM

    if args.config_file:
        if args.kernel or args.rootfs or args.drive or args.initrd or args.net:
            raise UsageError("--config-file describes the whole VM; do not combine it with "
                             "--kernel/--rootfs/--drive/--initrd/--net")
        config = load_config_file(args.config_file)
        sink, interactive = console_for(args.console, config)
        return MicroVM(config=config, console=sink, interactive=interactive, kvm_path=args.kvm_device,
                       boot_timer=_boot_time_printer(args)), interactive
    sink, interactive = console_for(args.console, None)
    if not args.kernel:
        raise UsageError("no kernel: give --kernel PATH (or --config-file); `firelet build kernel` makes one")
    return MicroVM(
        args.kernel,
        rootfs=args.rootfs,
        read_only=args.ro,
        initrd=args.initrd,
        cmdline=args.cmdline,
        cmd=args.cmd,
        vcpus=args.vcpus if args.vcpus is not None else 1,
        mem_mib=args.mem if args.mem is not None else 128,
        drives=[parse_drive(d) for d in args.drive],
        network_interfaces=[parse_net(n, i) for i, n in enumerate(args.net)],
        console=sink,
        interactive=interactive,
        kvm_path=args.kvm_device,
        boot_timer=_boot_time_printer(args),
    ), interactive


def _boot_time_printer(args: argparse.Namespace) -> Any:
    """With --boot-timer: print Firecracker's ``Guest-boot-time`` line to stderr as the guest signals."""
    if not args.boot_timer:
        return False
    return lambda line: print(f"firelet: {line}", file=sys.stderr, flush=True)


def console_for(spec: str | None, config: Any) -> tuple[Any, bool]:
    """The console sink and whether it is interactive: ``--console``, else the config file's
    ``serial.serial_out_path`` (None: MicroVM opens it), else stdio. Both at once are refused."""
    serial = getattr(config, "serial", None)
    out_path = serial.serial_out_path if serial is not None else None
    if out_path:
        if spec is not None:
            raise UsageError(f"--console {spec} and the config file's serial.serial_out_path ({out_path}) "
                             "both say where the console goes: keep one")
        return None, False
    return _console(spec or "stdio")


def run(args: argparse.Namespace) -> int:
    vm, interactive = build_microvm(args)
    return run_foreground(vm, timeout=args.timeout, interactive=interactive)


def run_foreground(vm: Any, *, timeout: float | None, interactive: bool) -> int:
    """Start ``vm``, wait for its end with Ctrl-C/SIGTERM stopping it cleanly, report the outcome."""
    from firelet.cli.lean import on_dump_signal, resume_gc
    from firelet.cli.terminal import raw_terminal
    from firelet.vstate.exits import ExitKind, VmExit

    stop_requested: list[str] = []

    def on_signal(signum: int, _frame: object) -> None:
        reason = f"signal {signal.Signals(signum).name}"
        stop_requested.append(reason)
        if vm.vmm is not None:
            vm.vmm.stop(reason)

    def report_vcpus() -> None:  # after the thread stacks on SIGUSR2 (firelet.cli.lean)
        if vm.vmm is not None:
            print("\n".join(f"firelet: {line}" for line in vm.vmm.describe_vcpus()), file=sys.stderr, flush=True)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    remove_report = on_dump_signal(report_vcpus)
    try:
        with raw_terminal(interactive):
            vm.start()
            resume_gc()  # deferred by the console entry point while the VMM started
            if stop_requested:  # the signal came while the VM was being built
                vm.vmm.stop(stop_requested[0])
            deadline = None if timeout is None else _now() + timeout
            outcome = None
            while outcome is None:
                try:
                    step = 0.5 if deadline is None else max(0.0, min(0.5, deadline - _now()))
                    outcome = vm.vmm.wait(step)
                    if outcome is None and deadline is not None and _now() >= deadline:
                        where = "; ".join(vm.vmm.describe_vcpus())  # why it is stuck, if the guest is
                        vm.vmm.finish(VmExit(ExitKind.TIMEOUT, f"no end within {timeout:g} s ({where})"))
                        outcome = vm.vmm.exit
                except KeyboardInterrupt:
                    vm.vmm.stop("interrupted")
            vm.close()
    finally:
        remove_report()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not outcome.clean:
        print(f"firelet: {outcome}", file=sys.stderr)
    return outcome.exit_code


def _now() -> float:
    import time

    return time.monotonic()
