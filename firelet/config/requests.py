"""Bodies of API requests that are not part of the configuration file.

Shapes from Firecracker's ``firecracker.yaml`` (1.x); the configuration-file
sections (drives, machine-config, ...) live in :mod:`firelet.config.model`.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from firelet.config.model import MAX_MEM_SIZE_MIB, Model, RateLimiter, TokenBucket

_U32_MAX = (1 << 32) - 1  # firecracker.yaml: MemoryHotplugSizeUpdate.requested_size_mib


class BalloonStatsUpdate(Model):
    stats_polling_interval_s: Annotated[int, msgspec.Meta(ge=0, le=0xFFFF)]


class BalloonUpdate(Model):
    amount_mib: Annotated[int, msgspec.Meta(ge=0, le=MAX_MEM_SIZE_MIB)]


class BalloonStartCmd(Model):
    """Starts a free page hinting run; ``acknowledge_on_stop`` acks the guest's "done" by itself."""

    acknowledge_on_stop: bool | None = None


class PartialPmem(Model):
    id: str
    rate_limiter: RateLimiter | None = None


class MemoryHotplugSizeUpdate(Model):
    requested_size_mib: Annotated[int, msgspec.Meta(ge=0, le=_U32_MAX)] | None = None


class PartialDrive(Model):
    drive_id: str
    path_on_host: str | None = None
    rate_limiter: RateLimiter | None = None


def patched_rate_limiter(current: RateLimiter | None, patch: RateLimiter) -> RateLimiter | None:
    """The limiter a PATCH leaves, as Firecracker applies one: a bucket the patch names replaces
    the current one (size or refill_time 0: no limit, so none is left), one it omits stays."""
    def bucket(old: TokenBucket | None, new: TokenBucket | None) -> TokenBucket | None:
        if new is None:
            return old
        return None if new.size == 0 or new.refill_time == 0 else new

    bandwidth = bucket(current.bandwidth if current else None, patch.bandwidth)
    ops = bucket(current.ops if current else None, patch.ops)
    return None if bandwidth is None and ops is None else RateLimiter(bandwidth=bandwidth, ops=ops)


class PartialNetworkInterface(Model):
    iface_id: str
    rx_rate_limiter: RateLimiter | None = None
    tx_rate_limiter: RateLimiter | None = None


class InstanceActionInfo(Model):
    action_type: Literal["FlushMetrics", "InstanceStart", "SendCtrlAltDel"]


class VmState(Model):
    state: Literal["Paused", "Resumed"]


class SnapshotCreateParams(Model):
    mem_file_path: str
    snapshot_path: str
    snapshot_type: Literal["Full", "Diff"] = "Full"


class MemoryBackend(Model):
    backend_type: Literal["File", "Uffd"]
    backend_path: str


class NetworkOverride(Model):
    iface_id: str
    host_dev_name: str


class VsockOverride(Model):
    uds_path: str


class SnapshotLoadParams(Model):
    snapshot_path: str
    mem_file_path: str | None = None
    mem_backend: MemoryBackend | None = None
    enable_diff_snapshots: bool | None = None
    track_dirty_pages: bool | None = None
    resume_vm: bool = False
    network_overrides: list[NetworkOverride] | None = None
    vsock_override: VsockOverride | None = None
    clock_realtime: bool | None = None
    huge_pages: Literal["Snapshot", "None", "Transparent", "2M"] | None = None

    def __post_init__(self) -> None:
        # Firecracker's texts (parse_put_snapshot), then which field to give.
        if self.mem_file_path is not None and self.mem_backend is not None:
            raise ValueError("too many fields: either `mem_backend` or `mem_file_path` exclusively is required "
                             "(give only mem_backend)")
        if self.mem_file_path is None and self.mem_backend is None:
            raise ValueError("missing field: either `mem_backend` or `mem_file_path` is required")
