"""``GET /vm/config`` is Firecracker's ``FullVmConfiguration``, and it feeds back as a config file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from firelet.api.routes import Api
from firelet.config import model
from firelet.config.export import full_vm_configuration
from firelet.config.files import load_config_file

from api_fake_backend import FakeBackend, call, serve

SECTIONS = {"balloon", "drives", "boot-source", "cpu-config", "logger", "machine-config", "metrics",
            "memory-hotplug", "mmds-config", "network-interfaces", "pmem", "vsock", "entropy"}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[Api, Path]]:
    api = Api(instance_id="cfg", backend_factory=FakeBackend)
    with serve(api, tmp_path / "api.sock"):
        yield api, tmp_path


def _ok(sock: Path, method: str, path: str, body: Any = None) -> Any:
    status, answer = call(sock, method, path, body)
    assert status in (200, 204), (method, path, answer)
    return answer


def test_an_unconfigured_vm_reports_every_section(api: tuple[Api, Path]) -> None:
    _, tmp = api
    got = _ok(tmp / "api.sock", "GET", "/vm/config")
    assert got == {
        "balloon": None, "drives": [], "boot-source": {"kernel_image_path": "", "initrd_path": None, "boot_args": None},
        "cpu-config": None, "logger": None,
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128, "smt": False, "track_dirty_pages": False,
                           "huge_pages": "None"},
        "metrics": None, "memory-hotplug": None, "mmds-config": None, "network-interfaces": [], "pmem": [],
        "vsock": None, "entropy": None,
    }


def test_drives_carry_firecrackers_defaults_and_logger_metrics_are_null(api: tuple[Api, Path]) -> None:
    _, tmp = api
    sock = tmp / "api.sock"
    for name in ("vmlinux", "root.ext4", "data.ext4"):
        (tmp / name).write_bytes(b"\0" * 1024)
    _ok(sock, "PUT", "/logger", {"level": "Info"})
    _ok(sock, "PUT", "/boot-source", {"kernel_image_path": str(tmp / "vmlinux")})
    _ok(sock, "PUT", "/drives/root", {"drive_id": "root", "path_on_host": str(tmp / "root.ext4"), "is_root_device": True})
    got = _ok(sock, "GET", "/vm/config")
    assert set(got) == SECTIONS and got["logger"] is None and got["metrics"] is None
    assert got["drives"] == [{"drive_id": "root", "partuuid": None, "is_root_device": True, "cache_type": "Unsafe",
                              "is_read_only": False, "path_on_host": str(tmp / "root.ext4"), "rate_limiter": None,
                              "io_engine": "Sync", "socket": None}]
    assert got["boot-source"] == {"kernel_image_path": str(tmp / "vmlinux"), "initrd_path": None, "boot_args": None}


def _firelet_sections(config: model.VmConfig) -> dict[str, Any]:
    """The configuration minus what Firecracker does not report back (process settings, serial)."""
    return msgspec.to_builtins(msgspec.structs.replace(config, logger=None, metrics=None, serial=None))


def test_a_configured_vm_round_trips_through_the_config_file_loader(api: tuple[Api, Path]) -> None:
    """Every section firelet can configure: GET /vm/config, saved as a file, loads as the same configuration."""
    a, tmp = api
    sock = tmp / "api.sock"
    for name in ("vmlinux", "initrd", "root.ext4", "data.ext4"):
        (tmp / name).write_bytes(b"\0" * 1024)
    _ok(sock, "PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 256, "huge_pages": "2M"})
    _ok(sock, "PUT", "/boot-source", {"kernel_image_path": str(tmp / "vmlinux"), "initrd_path": str(tmp / "initrd"),
                                      "boot_args": "console=ttyS0 reboot=k"})
    _ok(sock, "PUT", "/drives/root", {"drive_id": "root", "path_on_host": str(tmp / "root.ext4"),
                                      "is_root_device": True, "partuuid": "0eaa91a0-01", "is_read_only": True})
    _ok(sock, "PUT", "/drives/data", {"drive_id": "data", "path_on_host": str(tmp / "data.ext4"),
                                      "is_root_device": False, "cache_type": "Writeback", "io_engine": "Async"})
    _ok(sock, "PUT", "/cpu-config", {})
    _ok(sock, "PUT", "/metrics", {"metrics_path": str(tmp / "metrics")})
    exported = _ok(sock, "GET", "/vm/config")
    saved = tmp / "vm_config.json"
    saved.write_text(json.dumps(exported))
    loaded = load_config_file(saved)
    assert _firelet_sections(loaded) == _firelet_sections(a.config)
    assert json.loads(json.dumps(full_vm_configuration(loaded))) == exported  # and back again, unchanged
    assert a.metrics_writer is not None  # set by PUT /metrics above
    a.metrics_writer.close()
