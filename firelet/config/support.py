"""Which parts of a configuration firelet cannot carry out yet, each named where it sits.

firelet accepts every section and field of Firecracker's configuration
(firecracker.yaml, ``FullVmConfiguration``), so a file written for Firecracker
decodes unchanged. A section for a feature firelet lacks may be left null or
empty (Firecracker's own ``vm_config.json`` has ``"pmem": []`` and
``"memory-hotplug": null``); asking for the feature is refused in one line,
never ignored. The config file is refused when it is read, an API-built
configuration when the VM starts.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec

#: A ``firelet.config.model.VmConfig``; only its attributes are read, and the model calls
#: this module, so it is not imported here (no cycle).
VmConfig = Any


class Unsupported(NamedTuple):
    """``where`` in the file (a section or ``section.field``) asks for ``what``, which firelet lacks."""

    where: str
    what: str

    def message(self) -> str:
        remedy = "remove it" if "." in self.where else "remove the section or leave it empty"
        return f"{self.where}: {self.what} not supported by firelet yet; {remedy}"


def _cpu_config_empty(cfg: VmConfig) -> bool:
    cpu = cfg.cpu_config
    return cpu is None or not any((cpu.kvm_capabilities, cpu.cpuid_modifiers, cpu.msr_modifiers,
                                   cpu.reg_modifiers, cpu.vcpu_features))


def unsupported(cfg: VmConfig) -> list[Unsupported]:
    """Every part of ``cfg`` that asks for something firelet cannot do yet, in file order."""
    machine = cfg.machine_config
    found = [Unsupported(where, what) for where, what, asked in (
        ("vsock", "the vsock device is", cfg.vsock is not None),
        ("entropy", "the entropy device (virtio-rng) is", cfg.entropy is not None),
        ("balloon", "the balloon device is", cfg.balloon is not None),
        ("mmds-config", "the microVM metadata service (MMDS) is", cfg.mmds_config is not None),
        ("cpu-config", "custom CPU templates are", not _cpu_config_empty(cfg)),
        ("pmem", "virtio-pmem devices are", bool(cfg.pmem)),
        ("memory-hotplug", "memory hot-plug (virtio-mem) is", cfg.memory_hotplug is not None),
        ("machine-config.smt", "simultaneous multithreading is", machine.smt),
        ("machine-config.cpu_template", "CPU templates are", machine.cpu_template not in (msgspec.UNSET, "None")),
        ("metrics.emit_id", "the instance id in metrics lines is", cfg.metrics is not None and cfg.metrics.emit_id),
        ("metrics.properties", "metrics properties are", cfg.metrics is not None and bool(cfg.metrics.properties)),
    ) if asked]
    for drive in cfg.drives:
        if drive.socket is not None:
            found.append(Unsupported(f"drives[{drive.drive_id}].socket", "vhost-user block devices are"))
    for iface in cfg.network_interfaces:
        if iface.mtu is not None:
            found.append(Unsupported(f"network-interfaces[{iface.iface_id}].mtu",
                                     "advertising an MTU to the guest (VIRTIO_NET_F_MTU) is"))
    return found


def refuse_unsupported(cfg: VmConfig) -> None:
    """Raise :class:`~firelet.config.decoding.ConfigError` naming each part firelet cannot do yet."""
    from firelet.config.decoding import ConfigError

    parts = unsupported(cfg)
    if len(parts) == 1:
        raise ConfigError(parts[0].message())
    if parts:
        raise ConfigError(f"not supported by firelet yet: {', '.join(part.where for part in parts)}; "
                          "remove them (or leave the sections empty)")
