"""``firelet demo``: build (or reuse) the guest images and boot a microVM that greets you.

On a terminal it gives an interactive shell in the guest (``exit`` powers it
off); otherwise, or with ``--cmd``, it runs a command and ends. Where the local
/dev/kvm cannot run stock Linux guests, it runs itself inside the nested rig.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

#: What the demo guest runs when nobody is at a terminal to type.
DEFAULT_DEMO_CMD = (
    'echo "Hello from a firelet microVM!"; uname -sr; '
    'echo "CPUs: $(grep -c ^processor /proc/cpuinfo)"; '
    "grep MemTotal /proc/meminfo; cat /proc/cmdline"
)


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="boot a demo microVM (builds the guest images on first use)")
    p.add_argument("--cmd", help="run this command in the guest instead of an interactive shell")
    p.add_argument("--vcpus", type=int, default=2, help="vCPUs (default 2)")
    p.add_argument("--mem", type=int, default=256, metavar="MiB", help="guest memory (default 256)")
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="stop the VM after S seconds")
    p.set_defaults(func=demo)


def demo(args: argparse.Namespace) -> int:
    from firelet.cli.terminal import is_interactive
    from firelet.devtools.images import build_kernel, build_rootfs
    from firelet.devtools.nested.detect import local_kvm_runs_stock_guests

    kernel = build_kernel()
    rootfs = build_rootfs()
    interactive = args.cmd is None and is_interactive()
    ok, reason = local_kvm_runs_stock_guests()
    if not ok:
        return _demo_in_rig(args, reason, interactive)
    return _boot(kernel.vmlinux, rootfs, args, interactive)


def _demo_in_rig(args: argparse.Namespace, reason: str, interactive: bool) -> int:
    import compileall

    from firelet.devtools.cache import repo_root
    from firelet.devtools.nested import run_in_rig

    print(f"firelet: {reason}; running the demo inside the nested rig (QEMU TCG + KVM), ~1 min", file=sys.stderr)
    # The rig sees this checkout read-only: compile bytecode now so Python starts fast inside.
    compileall.compile_dir(str(repo_root() / "firelet"), quiet=1)
    argv = [sys.executable, "-m", "firelet", "demo", "--vcpus", str(args.vcpus), "--mem", str(args.mem)]
    # Inside, the console is always a terminal: decide here whether a person is at one.
    cmd = args.cmd if args.cmd is not None else (None if interactive else DEFAULT_DEMO_CMD)
    if cmd is not None:
        argv += ["--cmd", cmd]
    if args.timeout is not None:
        argv += ["--timeout", str(args.timeout)]
    return run_in_rig(argv, timeout=1800, interactive=interactive)


def _boot(vmlinux: os.PathLike[str], template: os.PathLike[str], args: argparse.Namespace, interactive: bool) -> int:
    from firelet.builder.boot import DEFAULT_BOOT_ARGS
    from firelet.cli.run import run_foreground
    from firelet.devtools.images import copy_rootfs
    from firelet.microvm import MicroVM, stdout_sink

    cmd = args.cmd if args.cmd is not None else (None if interactive else DEFAULT_DEMO_CMD)
    with tempfile.TemporaryDirectory(prefix="firelet-demo-") as tmp:
        disk = copy_rootfs(Path(tmp) / "rootfs.ext4")
        vm = MicroVM(
            vmlinux, rootfs=disk, cmd=cmd, vcpus=args.vcpus, mem_mib=args.mem,
            cmdline=f"{DEFAULT_BOOT_ARGS} quiet",  # the greeting, not the kernel's boot log
            console=stdout_sink(), interactive=interactive,
        )
        return run_foreground(vm, timeout=args.timeout, interactive=interactive)
