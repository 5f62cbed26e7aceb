"""The microVM configuration: typed, validated structures decoded once at the boundary.

The shapes mirror Firecracker's JSON configuration file and API bodies
(``src/firecracker/swagger/firecracker.yaml``, 1.x): kebab-case keys at the top
of the file, snake_case inside. Decoding is strict (unknown fields, wrong types
and out-of-range values are rejected) and every failure becomes one line that
names the field, e.g. ``machine-config.vcpu_count: expected int >= 1, got 0``.
The rest of firelet sees only these structs, never raw dicts.
"""

# No ``from __future__ import annotations`` here: msgspec would then have to compile every
# field's annotation string on the first decode, a cost the VMM pays at each start.
from typing import Annotated, Literal

import msgspec

from firelet.arch.x86_64 import layout
from firelet.config.decoding import (  # noqa: F401 - re-exported: the config's decoding API
    ConfigError,
    convert,
    decode_json,
    format_validation_error,
    to_builtins,
)
from firelet.config.rules import (
    check_id,
    check_mac,
    first_duplicate,
    normalize_log_level,
)
from firelet.devices.rate_limiter import MAX_REFILL_TIME_MS

# Ranges from firecracker.yaml (MachineConfiguration, Vsock, TokenBucket, NetworkInterface).
MIN_VCPUS = 1
MAX_VCPUS = 32
#: firecracker.yaml sets no minimum and Firecracker refuses only 0. firelet's boot structures
#: (GDT, zero page, page tables, command line, MP table) all lie below 1 MiB (``layout``), so
#: 1 MiB is the floor of the layout; whether the kernel fits above its load address (16 MiB
#: for most x86 kernels) is known only once its image is read, and is checked at start.
MIN_MEM_SIZE_MIB = -(-layout.HIMEM_START // layout.MiB)
MAX_MEM_SIZE_MIB = layout.MAX_MEM_SIZE // layout.MiB
DEFAULT_VCPUS = 1
DEFAULT_MEM_SIZE_MIB = 128
#: CIDs 0-2 are reserved for the hypervisor, local and host (virtio 1.2 §5.10.4).
MIN_GUEST_CID = 3
MAX_GUEST_CID = 0xFFFF_FFFF
MIN_MTU = 68
MAX_MTU = 65535
_I64_MAX = (1 << 63) - 1  # firecracker.yaml: TokenBucket fields are int64
_U32_MAX = (1 << 32) - 1  # firecracker.yaml: MemoryHotplugConfig sizes
MMDS_DEFAULT_IPV4 = "169.254.169.254"

CpuTemplate = Literal["C3", "T2", "T2S", "T2CL", "T2A", "V1N1", "None"]


class Model(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """Strict base: unknown fields are errors; unset optional fields are left out of JSON."""


# -- Rate limiting -----------------------------------------------------------
class TokenBucket(Model):
    """Bytes or ops budget: ``size`` tokens refilled every ``refill_time`` ms, plus a one-off burst."""

    size: Annotated[int, msgspec.Meta(ge=0, le=_I64_MAX)]
    #: Capped where Firecracker's nanosecond count would overflow (it then silently drops the limit).
    refill_time: Annotated[int, msgspec.Meta(ge=0, le=MAX_REFILL_TIME_MS)]
    one_time_burst: Annotated[int, msgspec.Meta(ge=0, le=_I64_MAX)] | None = None


class RateLimiter(Model):
    """Independent bandwidth (bytes) and ops limits; either may be absent (unlimited)."""

    bandwidth: TokenBucket | None = None
    ops: TokenBucket | None = None


# -- Boot and machine --------------------------------------------------------
class BootSource(Model):
    kernel_image_path: str
    initrd_path: str | None = None
    boot_args: str | None = None

    def __post_init__(self) -> None:
        if not self.kernel_image_path:
            raise ValueError("kernel_image_path: expected a path, got an empty string")
        if self.boot_args is not None and len(self.boot_args.encode()) >= layout.CMDLINE_MAX_SIZE:
            raise ValueError(
                f"boot_args: expected fewer than {layout.CMDLINE_MAX_SIZE} bytes, "
                f"got {len(self.boot_args.encode())}"
            )


class MachineConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """vCPUs and memory. Always encoded in full, as Firecracker's ``GET /machine-config`` is."""

    vcpu_count: Annotated[int, msgspec.Meta(ge=MIN_VCPUS, le=MAX_VCPUS)]
    mem_size_mib: Annotated[int, msgspec.Meta(le=MAX_MEM_SIZE_MIB)]  # the floor: __post_init__, with why
    smt: bool = False
    track_dirty_pages: bool = False
    huge_pages: Literal["None", "Transparent", "2M"] = "None"
    cpu_template: CpuTemplate | msgspec.UnsetType = msgspec.UNSET

    def __post_init__(self) -> None:
        if self.mem_size_mib < MIN_MEM_SIZE_MIB:
            raise ValueError(
                f"mem_size_mib: expected at least {MIN_MEM_SIZE_MIB}, got {self.mem_size_mib} (the boot structures "
                "take the first MiB; the kernel must also fit above its load address, usually 16 MiB, "
                "which is checked when the VM starts)"
            )
        # firecracker.yaml, putMachineConfiguration: SMT needs 1 or an even vCPU count.
        if self.smt and self.vcpu_count > 1 and self.vcpu_count % 2:
            raise ValueError(f"vcpu_count: with smt enabled, expected 1 or an even number, got {self.vcpu_count}")
        # ...and huge pages (docs/hugepages.md, both kinds) need a memory size that is a multiple of 2 MiB.
        if self.huge_pages != "None" and self.mem_size_mib % 2:
            raise ValueError(f"mem_size_mib: with {self.huge_pages} huge pages, expected a multiple of 2, "
                             f"got {self.mem_size_mib}")


def default_machine_config() -> MachineConfig:
    """Firecracker's defaults: 1 vCPU, 128 MiB."""
    return MachineConfig(vcpu_count=DEFAULT_VCPUS, mem_size_mib=DEFAULT_MEM_SIZE_MIB)


class CpuidRegisterModifier(Model):
    register: Literal["eax", "ebx", "ecx", "edx"]
    bitmap: str


class CpuidLeafModifier(Model):
    leaf: str
    subleaf: str
    flags: int
    modifiers: list[CpuidRegisterModifier]


class MsrModifier(Model):
    addr: str
    bitmap: str


class ArmRegisterModifier(Model):
    addr: str
    bitmap: str


class VcpuFeatures(Model):
    index: int
    bitmap: str


class CpuConfig(Model):
    """A custom CPU template. Accepted and stored; the VMM decides what it can apply."""

    kvm_capabilities: list[str] | None = None
    cpuid_modifiers: list[CpuidLeafModifier] | None = None
    msr_modifiers: list[MsrModifier] | None = None
    reg_modifiers: list[ArmRegisterModifier] | None = None
    vcpu_features: list[VcpuFeatures] | None = None


# -- Devices -----------------------------------------------------------------
class Drive(Model):
    """A virtio-block device backed by a host file (or a vhost-user ``socket``)."""

    drive_id: str
    is_root_device: bool
    path_on_host: str | None = None
    is_read_only: bool | None = None
    partuuid: str | None = None
    cache_type: Literal["Unsafe", "Writeback"] = "Unsafe"
    io_engine: Literal["Sync", "Async"] = "Sync"
    rate_limiter: RateLimiter | None = None
    socket: str | None = None

    def __post_init__(self) -> None:
        check_id("drive_id", self.drive_id)
        if self.socket is None and not self.path_on_host:
            raise ValueError("path_on_host: required for a virtio-block drive (or give a vhost-user socket)")
        if self.socket is not None and self.path_on_host is not None:
            raise ValueError("socket: a vhost-user drive takes no path_on_host; give one or the other")

    @property
    def read_only(self) -> bool:
        return bool(self.is_read_only)


class NetworkInterface(Model):
    """A virtio-net device attached to a host TAP device."""

    iface_id: str
    host_dev_name: str
    guest_mac: str | None = None
    mtu: Annotated[int, msgspec.Meta(ge=MIN_MTU, le=MAX_MTU)] | None = None
    rx_rate_limiter: RateLimiter | None = None
    tx_rate_limiter: RateLimiter | None = None
    #: firelet's own: frames move in the host kernel (vhost-net), not through the VMM.
    vhost: bool = False

    def __post_init__(self) -> None:
        check_id("iface_id", self.iface_id)
        if self.vhost and (self.rx_rate_limiter or self.tx_rate_limiter):
            raise ValueError("vhost: an interface on vhost-net moves its frames in the host kernel, where "
                             "firelet cannot limit them; drop rx_rate_limiter/tx_rate_limiter or vhost")
        name = self.host_dev_name
        if not name or len(name.encode()) > 15:  # IFNAMSIZ - 1 (linux/if.h)
            raise ValueError(f"host_dev_name: expected 1 to 15 characters, got {name!r}")
        # What the kernel refuses in an interface name (net/core/dev.c, dev_valid_name).
        if name in (".", "..") or any(c in "/:\0" or c.isspace() for c in name):
            raise ValueError(f"host_dev_name: expected an interface name (no '/', ':' or spaces), got {name!r}")
        if self.guest_mac is not None:
            self.guest_mac = check_mac(self.guest_mac)

    @property
    def mac_bytes(self) -> bytes | None:
        """The guest MAC as the 6 bytes of the device's config space, or None when none is set."""
        return bytes.fromhex(self.guest_mac.replace(":", "")) if self.guest_mac else None



class Pmem(Model):
    """A virtio-pmem device backed by a host file (firecracker.yaml, Pmem)."""

    id: str
    path_on_host: str
    root_device: bool = False
    read_only: bool = False
    rate_limiter: RateLimiter | None = None

    def __post_init__(self) -> None:
        check_id("id", self.id)
        if not self.path_on_host:
            raise ValueError("path_on_host: expected a path, got an empty string")


class MemoryHotplugConfig(Model):
    """The hot-pluggable memory region of a virtio-mem device (firecracker.yaml, MemoryHotplugConfig)."""

    total_size_mib: Annotated[int, msgspec.Meta(ge=0, le=_U32_MAX)] | None = None
    slot_size_mib: Annotated[int, msgspec.Meta(ge=128, le=_U32_MAX)] = 128
    block_size_mib: Annotated[int, msgspec.Meta(ge=2, le=_U32_MAX)] = 2


class Vsock(Model):
    guest_cid: Annotated[int, msgspec.Meta(ge=MIN_GUEST_CID, le=MAX_GUEST_CID)]
    uds_path: str
    vsock_id: str | None = None

    def __post_init__(self) -> None:
        if not self.uds_path:
            raise ValueError("uds_path: expected a path, got an empty string")


class Entropy(Model):
    rate_limiter: RateLimiter | None = None


class Balloon(Model):
    amount_mib: Annotated[int, msgspec.Meta(ge=0, le=MAX_MEM_SIZE_MIB)]
    deflate_on_oom: bool
    stats_polling_interval_s: Annotated[int, msgspec.Meta(ge=0, le=0xFFFF)] = 0
    free_page_hinting: bool = False
    free_page_reporting: bool = False


class SerialConfig(Model):
    serial_out_path: str | None = None
    rate_limiter: TokenBucket | None = None


class Logger(Model):
    log_path: str | None = None
    level: str | None = None
    show_level: bool | None = None
    show_log_origin: bool | None = None
    module: str | None = None

    def __post_init__(self) -> None:
        if self.level is not None:
            self.level = normalize_log_level(self.level)



class Metrics(Model):
    metrics_path: str
    emit_id: bool = False
    properties: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if not self.metrics_path:
            raise ValueError("metrics_path: expected a path, got an empty string")


class MmdsConfig(Model):
    network_interfaces: list[str]
    version: Literal["V1", "V2"] = "V1"
    ipv4_address: str = MMDS_DEFAULT_IPV4
    imds_compat: bool = False

    def __post_init__(self) -> None:
        # firecracker.yaml, MmdsConfig.ipv4_address: link-local, not .0.x network or broadcast.
        import ipaddress  # rare path: keep it off the VMM's import time

        try:
            addr = ipaddress.IPv4Address(self.ipv4_address)
        except ValueError:
            addr = None
        if addr is None or not addr.is_link_local or addr.packed[2] == 0 or addr.packed[2] == 255:
            raise ValueError(f"ipv4_address: expected a link-local address in 169.254.1.0-169.254.254.255, "
                             f"got {self.ipv4_address!r}")


# -- The whole configuration -------------------------------------------------
class VmConfig(
    Model,
    rename={
        "boot_source": "boot-source",
        "machine_config": "machine-config",
        "network_interfaces": "network-interfaces",
        "mmds_config": "mmds-config",
        "cpu_config": "cpu-config",
        "memory_hotplug": "memory-hotplug",
    },
):
    """Firecracker's configuration file, and the state ``GET /vm/config`` reports.

    ``boot_source`` may be absent while the API is still configuring; a VM can
    start only once :func:`check_startable` passes. ``serial`` is a firelet
    extension (Firecracker configures it only through ``PUT /serial``).
    """

    boot_source: BootSource | None = None
    drives: list[Drive] = msgspec.field(default_factory=list)
    machine_config: MachineConfig = msgspec.field(default_factory=default_machine_config)
    network_interfaces: list[NetworkInterface] = msgspec.field(default_factory=list)
    vsock: Vsock | None = None
    entropy: Entropy | None = None
    balloon: Balloon | None = None
    logger: Logger | None = None
    metrics: Metrics | None = None
    mmds_config: MmdsConfig | None = None
    cpu_config: CpuConfig | None = None
    pmem: list[Pmem] = msgspec.field(default_factory=list)
    memory_hotplug: MemoryHotplugConfig | None = None
    serial: SerialConfig | None = None

    def __post_init__(self) -> None:
        problem = _cross_field_problem(self)
        if problem:
            raise ValueError(problem)

    @property
    def root_drive(self) -> Drive | None:
        return next((d for d in self.drives if d.is_root_device), None)


def _cross_field_problem(cfg: VmConfig) -> str | None:
    """The first rule spanning several sections that ``cfg`` breaks, as a message, or None."""
    roots = [d.drive_id for d in cfg.drives if d.is_root_device]
    if len(roots) > 1:
        return f"drives: only one drive may be the root device, got {', '.join(roots)}"
    dup = first_duplicate([d.drive_id for d in cfg.drives])
    if dup:
        return f"drives: drive_id {dup!r} appears more than once"
    dup = first_duplicate([p.id for p in cfg.pmem])
    if dup:
        return f"pmem: id {dup!r} appears more than once"
    dup = first_duplicate([n.iface_id for n in cfg.network_interfaces])
    if dup:
        return f"network-interfaces: iface_id {dup!r} appears more than once"
    dup = first_duplicate([n.host_dev_name for n in cfg.network_interfaces])
    if dup:
        return f"network-interfaces: host_dev_name {dup!r} is used by more than one interface"
    dup = first_duplicate([n.guest_mac.lower() for n in cfg.network_interfaces if n.guest_mac])
    if dup:
        return f"network-interfaces: guest_mac {dup} is used by more than one interface"
    if cfg.mmds_config is not None:
        known = {n.iface_id for n in cfg.network_interfaces}
        for iface in cfg.mmds_config.network_interfaces:
            if iface not in known:
                return f"mmds-config.network_interfaces: no network interface has iface_id {iface!r}"
    if cfg.balloon is not None and cfg.balloon.amount_mib > cfg.machine_config.mem_size_mib:
        return (f"balloon.amount_mib: expected at most the guest memory "
                f"({cfg.machine_config.mem_size_mib} MiB), got {cfg.balloon.amount_mib}")
    return None


def check_config(cfg: VmConfig) -> VmConfig:
    """Re-run the cross-section rules on a config built by code (e.g. after an API update)."""
    problem = _cross_field_problem(cfg)
    if problem:
        raise ConfigError(problem)
    return cfg


def check_startable(cfg: VmConfig) -> None:
    """What a VM needs beyond a valid config before it can start: a kernel."""
    if cfg.boot_source is None:
        raise ConfigError("boot-source: no kernel configured; set boot-source.kernel_image_path before starting")
