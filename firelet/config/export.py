"""The configuration as Firecracker reports it: ``GET /vm/config``'s ``FullVmConfiguration``.

Firecracker's answer has every section: absent devices are ``null`` (or
``[]`` for lists), optional fields are ``null`` rather than left out, drives
carry their defaults (``io_engine`` "Sync", ``cache_type`` "Unsafe"), and
``logger``, ``metrics`` and ``cpu-config`` are always ``null`` (they are
process settings, not part of the VM). A client that saves the answer and
feeds it back as ``--config-file`` gets the same VM.
"""

from __future__ import annotations

from typing import Any

import msgspec

from firelet.config.model import (
    Balloon,
    BootSource,
    Drive,
    Entropy,
    MachineConfig,
    MemoryHotplugConfig,
    MmdsConfig,
    NetworkInterface,
    Pmem,
    RateLimiter,
    TokenBucket,
    VmConfig,
    Vsock,
)


def _bucket(bucket: TokenBucket | None) -> dict[str, Any] | None:
    if bucket is None:
        return None
    return {"size": bucket.size, "one_time_burst": bucket.one_time_burst, "refill_time": bucket.refill_time}


def rate_limiter(limiter: RateLimiter | None) -> dict[str, Any] | None:
    if limiter is None:
        return None
    return {"bandwidth": _bucket(limiter.bandwidth), "ops": _bucket(limiter.ops)}


def boot_source(boot: BootSource | None) -> dict[str, Any]:
    """Firecracker reports an unset boot source as its default: an empty kernel path."""
    if boot is None:
        return {"kernel_image_path": "", "initrd_path": None, "boot_args": None}
    return {"kernel_image_path": boot.kernel_image_path, "initrd_path": boot.initrd_path, "boot_args": boot.boot_args}


def machine_config(machine: MachineConfig) -> dict[str, Any]:
    """``cpu_template`` appears only when a real template is set, as in Firecracker."""
    out: dict[str, Any] = {"vcpu_count": machine.vcpu_count, "mem_size_mib": machine.mem_size_mib,
                           "smt": machine.smt, "track_dirty_pages": machine.track_dirty_pages,
                           "huge_pages": machine.huge_pages}
    if machine.cpu_template not in (msgspec.UNSET, "None"):
        out["cpu_template"] = machine.cpu_template
    return out


def drive(d: Drive) -> dict[str, Any]:
    return {"drive_id": d.drive_id, "partuuid": d.partuuid, "is_root_device": d.is_root_device,
            "cache_type": d.cache_type, "is_read_only": d.is_read_only, "path_on_host": d.path_on_host,
            "rate_limiter": rate_limiter(d.rate_limiter), "io_engine": d.io_engine, "socket": d.socket}


def network_interface(n: NetworkInterface) -> dict[str, Any]:
    out = {"iface_id": n.iface_id, "host_dev_name": n.host_dev_name, "guest_mac": n.guest_mac, "mtu": n.mtu,
           "rx_rate_limiter": rate_limiter(n.rx_rate_limiter), "tx_rate_limiter": rate_limiter(n.tx_rate_limiter)}
    if n.vhost:  # firelet's own field: only when set, so Firecracker's tools read the rest unchanged
        out["vhost"] = True
    return out


def balloon(b: Balloon | None) -> dict[str, Any] | None:
    if b is None:
        return None
    return {"amount_mib": b.amount_mib, "deflate_on_oom": b.deflate_on_oom,
            "stats_polling_interval_s": b.stats_polling_interval_s,
            "free_page_hinting": b.free_page_hinting, "free_page_reporting": b.free_page_reporting}


def vsock(v: Vsock | None) -> dict[str, Any] | None:
    """The deprecated ``vsock_id`` is not reported (Firecracker drops it)."""
    return None if v is None else {"guest_cid": v.guest_cid, "uds_path": v.uds_path}


def entropy(e: Entropy | None) -> dict[str, Any] | None:
    return None if e is None else {"rate_limiter": rate_limiter(e.rate_limiter)}


def mmds_config(m: MmdsConfig | None) -> dict[str, Any] | None:
    if m is None:
        return None
    return {"version": m.version, "network_interfaces": list(m.network_interfaces),
            "ipv4_address": m.ipv4_address, "imds_compat": m.imds_compat}


def pmem(p: Pmem) -> dict[str, Any]:
    return {"id": p.id, "path_on_host": p.path_on_host, "root_device": p.root_device, "read_only": p.read_only,
            "rate_limiter": rate_limiter(p.rate_limiter)}


def memory_hotplug(h: MemoryHotplugConfig | None) -> dict[str, Any] | None:
    if h is None:
        return None
    return {"total_size_mib": h.total_size_mib, "slot_size_mib": h.slot_size_mib, "block_size_mib": h.block_size_mib}


def full_vm_configuration(cfg: VmConfig) -> dict[str, Any]:
    """Every ``FullVmConfiguration`` section of firecracker.yaml, shaped as Firecracker answers it."""
    return {
        "balloon": balloon(cfg.balloon),
        "drives": [drive(d) for d in cfg.drives],
        "boot-source": boot_source(cfg.boot_source),
        "cpu-config": None,
        "logger": None,
        "machine-config": machine_config(cfg.machine_config),
        "metrics": None,
        "memory-hotplug": memory_hotplug(cfg.memory_hotplug),
        "mmds-config": mmds_config(cfg.mmds_config),
        "network-interfaces": [network_interface(n) for n in cfg.network_interfaces],
        "pmem": [pmem(p) for p in cfg.pmem],
        "vsock": vsock(cfg.vsock),
        "entropy": entropy(cfg.entropy),
    }
