"""virtio-blk: one device per configured drive, the root drive first (it becomes /dev/vda)."""

from __future__ import annotations

from firelet.builder.spec import VIRTIO_MMIO, BuildInputs, DeviceSpec, Wiring
from firelet.config.model import Drive
from firelet.devices.rate_limiter import RateLimiter
from firelet.devices.virtio.block import Block


def ordered_drives(drives: list[Drive]) -> list[Drive]:
    """The root drive first (it becomes /dev/vda), then the others in the order given."""
    return sorted(drives, key=lambda d: not d.is_root_device)


def _plan(inputs: BuildInputs) -> list[tuple[str, Drive]]:
    return [(drive.drive_id, drive) for drive in ordered_drives(inputs.config.drives)]


def _make(drive: Drive, wiring: Wiring) -> Block:
    assert drive.path_on_host is not None  # checked by the builder's check_inputs
    limiter = RateLimiter.from_config(drive.rate_limiter)
    device = Block(drive.path_on_host, read_only=bool(drive.is_read_only), drive_id=drive.drive_id,
                   rate_limiter=limiter, timers=wiring.loop)
    wiring.on_close(device.close)
    return device


BLOCK_KIND = DeviceSpec(kind="block", plan=_plan, placement=VIRTIO_MMIO, make=_make)
