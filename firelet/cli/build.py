"""``firelet build {kernel,rootfs,initramfs,all}``: make the guest images.

Each prints where its artifacts are (one ``name: path`` line each) so scripts
can pick them up; a second run finds them in the cache and returns at once.
"""

from __future__ import annotations

import argparse
from typing import Any

from firelet.errors import UsageError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "build", help="build the guest kernel and root filesystems (cached)",
        description="Build guest images into the cache ($FIRELET_CACHE, default ~/.cache/firelet).",
    )
    targets = p.add_subparsers(dest="target", metavar="TARGET")
    kernel = targets.add_parser("kernel", help="the guest kernel (vmlinux + bzImage), minutes on first build")
    _add_jobs(kernel)
    rootfs = targets.add_parser("rootfs", help="the ext4 root filesystem image (busybox)")
    _add_size(rootfs)
    targets.add_parser("initramfs", help="the initramfs (gzip'd newc cpio of the same tree)")
    everything = targets.add_parser("all", help="kernel, rootfs and initramfs")
    _add_jobs(everything)
    _add_size(everything)
    p.set_defaults(func=build, target=None)


def _add_jobs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", "-j", type=int, default=None, metavar="N",
                        help="parallel make jobs (default: CPUs + 1)")


def _add_size(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size-mib", type=int, default=64, metavar="N",
                        help="ext4 image size in MiB (default 64)")


def build(args: argparse.Namespace) -> int:
    from firelet.devtools.images.progress import LiveLine

    if args.target is None:
        raise UsageError("say what to build: firelet build {kernel,rootfs,initramfs,all}")
    jobs = getattr(args, "jobs", None)
    if jobs is not None and jobs < 1:
        raise UsageError(f"--jobs must be at least 1, not {jobs}")
    progress = LiveLine()
    if args.target in ("kernel", "all"):
        from firelet.devtools.images import build_kernel

        artifacts = build_kernel(jobs=jobs, progress=progress)
        print(f"vmlinux: {artifacts.vmlinux}")
        print(f"bzImage: {artifacts.bzimage}")
    if args.target in ("rootfs", "all"):
        from firelet.devtools.images import build_rootfs

        print(f"rootfs: {build_rootfs(size_mib=args.size_mib, progress=progress)}")
    if args.target in ("initramfs", "all"):
        from firelet.devtools.images import build_initramfs

        print(f"initramfs: {build_initramfs(progress=progress)}")
    return 0
