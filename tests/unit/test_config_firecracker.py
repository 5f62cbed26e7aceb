"""Firecracker's configuration file, as Firecracker ships it, is firelet's (issue #12).

Every section and field of Firecracker's ``FullVmConfiguration`` decodes; a null or
empty section for a feature firelet lacks passes, a filled one is refused in one line
naming it. The reference is read from ``../shared/specs/firecracker`` beside the
checkout (``FIRELET_FIRECRACKER_SPECS`` overrides); without it those tests skip.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest

from firelet.builder.boot import check_inputs
from firelet.config.decoding import ConfigError
from firelet.config.files import decode_config, load_config_file
from firelet.config.model import VmConfig
from firelet.config.support import unsupported
from firelet.devtools.cache import repo_root
from firelet.errors import UsageError

SPECS = Path(os.environ.get("FIRELET_FIRECRACKER_SPECS", repo_root().parent / "shared" / "specs" / "firecracker"))
SWAGGER = SPECS / "src" / "firecracker" / "swagger" / "firecracker.yaml"
VM_CONFIG = SPECS / "tests" / "framework" / "vm_config.json"
needs_specs = pytest.mark.skipif(not SWAGGER.exists(), reason=f"Firecracker's reference is not at {SPECS}")


def _definitions() -> dict[str, Any]:
    import yaml  # schemathesis's dependency; only this test reads YAML

    return yaml.safe_load(SWAGGER.read_text())["definitions"]


def _struct_of(t: msgspec.inspect.Type) -> msgspec.inspect.StructType | None:
    """The struct behind ``T | None`` or ``list[T]``, if any."""
    if isinstance(t, msgspec.inspect.UnionType):
        found = [_struct_of(x) for x in t.types]
        return next((f for f in found if f is not None), None)
    if isinstance(t, msgspec.inspect.ListType):
        return _struct_of(t.item_type)
    return t if isinstance(t, msgspec.inspect.StructType) else None


def _literals(t: msgspec.inspect.Type) -> set[Any] | None:
    if isinstance(t, msgspec.inspect.UnionType):
        values = [_literals(x) for x in t.types]
        return set().union(*(v for v in values if v)) or None
    return set(t.values) if isinstance(t, msgspec.inspect.LiteralType) else None


def _ref(schema: dict[str, Any]) -> str | None:
    target = schema.get("$ref") or schema.get("items", {}).get("$ref")
    return target.rsplit("/", 1)[1] if target else None


def _missing(definition: str, struct: msgspec.inspect.StructType, defs: dict[str, Any], seen: set[str]) -> list[str]:
    """Firecracker's properties (and enum values) under ``definition`` that ``struct`` lacks, recursively."""
    seen.add(definition)
    fields = {f.encode_name: f for f in struct.fields}
    problems = []
    for name, schema in defs[definition].get("properties", {}).items():
        field = fields.get(name)
        if field is None:
            problems.append(f"{definition}.{name}")
            continue
        target = _ref(schema)
        enum = defs[target].get("enum") if target else schema.get("enum")
        ours = _literals(field.type)
        if enum and ours is not None and set(map(str, enum)) - ours:
            problems.append(f"{definition}.{name} values {sorted(set(map(str, enum)) - ours)}")
        inner = _struct_of(field.type)
        if target and inner is not None and "properties" in defs[target] and target not in seen:
            problems += _missing(target, inner, defs, seen)
    return problems


@needs_specs
def test_every_section_and_field_of_firecrackers_full_configuration_is_accepted() -> None:
    defs = _definitions()
    top = msgspec.inspect.type_info(VmConfig)
    assert isinstance(top, msgspec.inspect.StructType)
    assert _missing("FullVmConfiguration", top, defs, set()) == []


def _firecrackers_example(tmp_path: Path) -> Path:
    """Firecracker's ``vm_config.json`` with its two paths (kernel, rootfs) made real, nothing else changed."""
    doc = json.loads(VM_CONFIG.read_text())
    kernel, rootfs = tmp_path / "vmlinux.bin", tmp_path / "bionic.rootfs.ext4"
    kernel.write_bytes(b"\x7fELF")
    rootfs.write_bytes(bytes(4096))
    doc["boot-source"]["kernel_image_path"] = str(kernel)
    doc["drives"][0]["path_on_host"] = str(rootfs)
    path = tmp_path / "vm_config.json"
    path.write_text(json.dumps(doc))
    return path


@needs_specs
def test_firecrackers_own_example_config_loads_and_passes_the_start_checks(tmp_path: Path) -> None:
    cfg = load_config_file(_firecrackers_example(tmp_path))
    assert (cfg.machine_config.vcpu_count, cfg.machine_config.mem_size_mib) == (2, 1024)
    assert cfg.pmem == [] and cfg.memory_hotplug is None and cfg.network_interfaces == []
    check_inputs(cfg)  # the builder's own checks, up to the point a kernel is read


_BASE: dict[str, Any] = {"boot-source": {"kernel_image_path": "/k"}}
#: Each section or field of a feature firelet lacks: (where, the empty forms, a filled form).
SECTIONS: list[tuple[str, list[Any], Any]] = [
    ("vsock", [None], {"guest_cid": 3, "uds_path": "/tmp/v.sock"}),
    ("entropy", [None], {}),
    ("balloon", [None], {"amount_mib": 0, "deflate_on_oom": False}),
    ("cpu-config", [None, {}, {"kvm_capabilities": [], "cpuid_modifiers": []}], {"kvm_capabilities": ["!121"]}),
    ("pmem", [[]], [{"id": "pmem0", "path_on_host": "/p.img"}]),
    ("memory-hotplug", [None], {"total_size_mib": 1024}),
]
FIELDS: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = [
    ("machine-config.smt", "machine-config", {"vcpu_count": 2, "mem_size_mib": 128, "smt": False},
     {"vcpu_count": 2, "mem_size_mib": 128, "smt": True}),
    ("machine-config.cpu_template", "machine-config", {"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "None"},
     {"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "T2"}),
    ("metrics.emit_id", "metrics", {"metrics_path": "/m", "emit_id": False}, {"metrics_path": "/m", "emit_id": True}),
    ("metrics.properties", "metrics", {"metrics_path": "/m", "properties": {}},
     {"metrics_path": "/m", "properties": {"host": "a"}}),
    ("network-interfaces[eth0].mtu", "network-interfaces", [{"iface_id": "eth0", "host_dev_name": "tap0"}],
     [{"iface_id": "eth0", "host_dev_name": "tap0", "mtu": 1500}]),
    ("drives[rootfs].socket", "drives", [{"drive_id": "rootfs", "is_root_device": True, "path_on_host": "/r"}],
     [{"drive_id": "rootfs", "is_root_device": True, "socket": "/vhost.sock"}]),
]


def _load(tmp_path: Path, doc: dict[str, Any]) -> VmConfig:
    path = tmp_path / "vm.json"
    path.write_text(json.dumps({**_BASE, **doc}))
    return load_config_file(path)


def _refusal(tmp_path: Path, doc: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, doc)
    return str(info.value)


@pytest.mark.parametrize("section,empties,filled", SECTIONS, ids=[s[0] for s in SECTIONS])
def test_an_empty_section_passes_and_a_filled_one_is_refused_naming_it(
        tmp_path: Path, section: str, empties: list[Any], filled: Any) -> None:
    for empty in empties:
        assert unsupported(_load(tmp_path, {section: empty})) == []
    message = _refusal(tmp_path, {section: filled})
    assert message.startswith(f"config file {tmp_path / 'vm.json'}: {section}: ")
    assert "not supported by firelet yet; remove the section or leave it empty" in message
    assert "\n" not in message


@pytest.mark.parametrize("where,section,plain,asking", FIELDS, ids=[f[0] for f in FIELDS])
def test_a_field_asking_for_a_missing_feature_is_refused_naming_it(
        tmp_path: Path, where: str, section: str, plain: Any, asking: Any) -> None:
    assert unsupported(_load(tmp_path, {section: plain})) == []
    message = _refusal(tmp_path, {section: asking})
    assert message.startswith(f"config file {tmp_path / 'vm.json'}: {where}: ")
    assert message.endswith("not supported by firelet yet; remove it") and "\n" not in message


def test_a_drive_rate_limiter_is_taken(tmp_path: Path) -> None:
    limiter = {"bandwidth": {"size": 10_000_000, "refill_time": 1000, "one_time_burst": 0},
               "ops": {"size": 200, "refill_time": 1000}}
    cfg = _load(tmp_path, {"drives": [{"drive_id": "rootfs", "is_root_device": True, "path_on_host": "/r",
                                       "rate_limiter": limiter}]})
    assert unsupported(cfg) == []
    limits = cfg.drives[0].rate_limiter
    assert limits is not None and limits.bandwidth is not None and limits.ops is not None
    assert (limits.bandwidth.size, limits.ops.size, limits.ops.one_time_burst) == (10_000_000, 200, None)


def test_the_mmds_is_refused_while_its_network_interface_is_accepted(tmp_path: Path) -> None:
    doc = {"network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0"}],
           "mmds-config": {"network_interfaces": ["eth0"]}}
    message = _refusal(tmp_path, doc)
    assert message.endswith(": mmds-config: the microVM metadata service (MMDS) is not supported by firelet yet; "
                            "remove the section or leave it empty")


def test_a_configuration_built_through_the_api_is_refused_at_start_the_same_way(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"\x7fELF")
    cfg = decode_config(json.dumps({"boot-source": {"kernel_image_path": str(kernel)},
                                    "pmem": [{"id": "p", "path_on_host": "/p"}],
                                    "memory-hotplug": {"total_size_mib": 256}}).encode())
    with pytest.raises(UsageError, match="not supported by firelet yet: pmem, memory-hotplug;"):
        check_inputs(cfg)


@pytest.mark.parametrize("mib", [1, 8, 15])
def test_small_memory_sizes_are_accepted_as_firecracker_does(tmp_path: Path, mib: int) -> None:
    assert _load(tmp_path, {"machine-config": {"vcpu_count": 1, "mem_size_mib": mib}}).machine_config.mem_size_mib == mib


def test_zero_memory_is_refused_saying_why(tmp_path: Path) -> None:
    message = _refusal(tmp_path, {"machine-config": {"vcpu_count": 1, "mem_size_mib": 0}})
    assert "machine-config.mem_size_mib: expected at least 1, got 0" in message
    assert "boot structures take the first MiB" in message and "16 MiB" in message


def test_transparent_huge_pages_are_accepted(tmp_path: Path) -> None:
    cfg = _load(tmp_path, {"machine-config": {"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "Transparent"}})
    assert cfg.machine_config.huge_pages == "Transparent"
