"""Guest images (kernel, root filesystems); the guest-side conventions are in
:mod:`firelet.guest` and re-exported here.

The builders are imported lazily: importing this package costs nothing more
than ``base64`` and ``re``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from firelet.guest import (
    EXIT_MARKER,
    READY_MARKER,
    guest_cmdline_for,
    parse_exit_status,
    parse_ready_uptime,
)

if TYPE_CHECKING:
    from firelet.devtools.images.kernel import KernelArtifacts, build_kernel
    from firelet.devtools.images.rootfs import build_initramfs, build_rootfs, copy_rootfs

__all__ = [
    "EXIT_MARKER", "READY_MARKER", "KernelArtifacts", "build_initramfs", "build_kernel",
    "build_rootfs", "copy_rootfs", "guest_cmdline_for", "parse_exit_status", "parse_ready_uptime",
]

_LAZY = {
    "KernelArtifacts": "firelet.devtools.images.kernel",
    "build_kernel": "firelet.devtools.images.kernel",
    "build_rootfs": "firelet.devtools.images.rootfs",
    "build_initramfs": "firelet.devtools.images.rootfs",
    "copy_rootfs": "firelet.devtools.images.rootfs",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
