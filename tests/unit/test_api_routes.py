"""Each endpoint's answers and Firecracker's state rules, over a real Unix socket."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from firelet.api.faults import NOT_AFTER_BOOT, NOT_BEFORE_BOOT
from firelet.api.routes import Api
from firelet.config.model import Balloon, NetworkInterface, VmConfig
from firelet.controller.interface import BackendError
from firelet.metrics import Metrics

from api_fake_backend import FakeBackend, call, raw_exchange, request_bytes, serve

#: Real files the PUTs name (Firecracker opens them at the PUT); made in every test's directory.
FILES = ("vmlinux", "r.ext4", "other.ext4", "new.ext4")


class Harness:
    def __init__(self, tmp_path: Path, fake: FakeBackend, config: VmConfig | None = None) -> None:
        self.fake = fake
        self.factory_calls = 0
        self.metrics = Metrics()
        self.api = Api(instance_id="test-vm", backend_factory=self._factory, metrics=self.metrics, config=config)
        self.sock = tmp_path / "api.sock"
        self.tmp = tmp_path
        for name in FILES:
            (tmp_path / name).write_bytes(b"\0" * 4096)
        self.kernel = {"kernel_image_path": str(tmp_path / "vmlinux"), "boot_args": "console=ttyS0"}
        self.root = {"drive_id": "rootfs", "path_on_host": str(tmp_path / "r.ext4"), "is_root_device": True,
                     "is_read_only": False}

    def _factory(self) -> FakeBackend:
        self.factory_calls += 1
        return self.fake

    def __call__(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return call(self.sock, method, path, body)

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = self(method, path, body)
        assert status in (200, 204), (method, path, answer)
        return answer

    def fault(self, method: str, path: str, body: Any = None) -> str:
        status, answer = self(method, path, body)
        assert status == 400, (method, path, status, answer)
        assert set(answer) == {"fault_message"}
        return answer["fault_message"]

    def boot(self) -> None:
        self.ok("PUT", "/boot-source", self.kernel)
        self.ok("PUT", "/drives/rootfs", self.root)
        self.ok("PUT", "/actions", {"action_type": "InstanceStart"})


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path, FakeBackend())
    with serve(harness.api, harness.sock):
        yield harness


def test_instance_info_before_and_after_boot(vm: Harness) -> None:
    info = vm.ok("GET", "/")
    assert info == {"id": "test-vm", "state": "Not started", "vmm_version": info["vmm_version"], "app_name": "firelet"}
    vm.boot()
    assert vm.ok("GET", "/")["state"] == "Running"
    assert "firecracker_version" in vm.ok("GET", "/version")


def test_full_api_boot_reaches_backend_with_the_configuration(vm: Harness) -> None:
    vm.ok("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 256})
    vm.boot()
    assert vm.fake.calls == [("start",)]
    assert vm.fake.config is not None and vm.fake.config.machine_config.vcpu_count == 2
    assert vm.fake.config.root_drive is not None
    assert vm.fake.loop_threads == {n for n in vm.fake.loop_threads if n.startswith("fake_loop")}


def test_machine_config_defaults_put_patch_get(vm: Harness) -> None:
    assert vm.ok("GET", "/machine-config") == {"vcpu_count": 1, "mem_size_mib": 128, "smt": False,
                                               "track_dirty_pages": False, "huge_pages": "None"}
    vm.ok("PUT", "/machine-config", {"vcpu_count": 4, "mem_size_mib": 512, "track_dirty_pages": True})
    vm.ok("PATCH", "/machine-config", {"mem_size_mib": 1024})
    got = vm.ok("GET", "/machine-config")
    assert (got["vcpu_count"], got["mem_size_mib"], got["track_dirty_pages"]) == (4, 1024, True)
    # PUT resets what it omits, as Firecracker's does.
    vm.ok("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 128})
    assert vm.ok("GET", "/machine-config")["track_dirty_pages"] is False


@pytest.mark.parametrize(("body", "needle"), [
    ({"vcpu_count": 0, "mem_size_mib": 128}, "vcpu_count: expected int >= 1, got 0"),
    ({"vcpu_count": 1}, "mem_size_mib: required field missing"),
    ({"vcpu_count": 1, "mem_size_mib": 128, "bogus": 1}, "unknown field 'bogus'"),
    ({"vcpu_count": "1", "mem_size_mib": 128}, "vcpu_count: expected int, got str"),
    ([1, 2], "expected object, got array"),
])
def test_machine_config_bad_bodies_name_the_field(vm: Harness, body: Any, needle: str) -> None:
    assert needle in vm.fault("PUT", "/machine-config", body)
    assert vm.ok("GET", "/machine-config")["vcpu_count"] == 1  # nothing half-applied




def test_machine_config_ranges_in_firecrackers_words(vm: Harness) -> None:
    assert vm.fault("PUT", "/machine-config", {"vcpu_count": 33, "mem_size_mib": 128}) == (
        "Machine config error: The vCPU number is invalid! The vCPU number can only be 1 or an even number when "
        "SMT is enabled. (vcpu_count: expected int <= 32, got 33)")
    assert vm.fault("PATCH", "/machine-config", {"mem_size_mib": 0}).startswith(
        "Machine config error: The memory size (MiB) is invalid. (mem_size_mib: expected")
    assert vm.fault("PUT", "/machine-config", {"vcpu_count": "2", "mem_size_mib": 128}).startswith(
        "An error occurred when deserializing the json body of a request: vcpu_count: expected int, got str")


def test_patch_machine_config_is_checked_as_a_whole(vm: Harness) -> None:
    vm.ok("PUT", "/machine-config", {"vcpu_count": 3, "mem_size_mib": 256})
    assert "with smt enabled" in vm.fault("PATCH", "/machine-config", {"smt": True})
    assert "unknown field 'x'" in vm.fault("PATCH", "/machine-config", {"x": 1})
    assert vm.ok("GET", "/machine-config")["vcpu_count"] == 3


def test_features_firelet_lacks_are_refused_at_their_put(vm: Harness) -> None:
    """Firecracker refuses at the request that brings the problem, not at InstanceStart."""
    for method, path, body, needle in [
        ("PUT", "/vsock", {"guest_cid": 3, "uds_path": "/v.sock"}, "the vsock device is"),
        ("PUT", "/entropy", {}, "the entropy device (virtio-rng) is"),
        ("PUT", "/balloon", {"amount_mib": 0, "deflate_on_oom": False}, "the balloon device is"),
        ("PUT", "/cpu-config", {"kvm_capabilities": ["!121"]}, "custom CPU templates are"),
        ("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 256, "cpu_template": "T2"}, "CPU templates"),
        ("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 256, "smt": True}, "simultaneous multithreading"),
        ("PATCH", "/machine-config", {"smt": True}, "simultaneous multithreading"),
        ("PUT", "/drives/v", {"drive_id": "v", "is_root_device": False, "socket": "/s"}, "vhost-user block"),
        ("PUT", "/pmem/p0", {"id": "p0", "path_on_host": "/p"}, "virtio-pmem devices are"),
        ("PUT", "/hotplug/memory", {"total_size_mib": 1024}, "memory hot-plug (virtio-mem) is"),
        ("GET", "/hotplug/memory", None, "memory hot-plug (virtio-mem) is"),
        ("PUT", "/serial", {"rate_limiter": {"size": 1, "refill_time": 1}}, "serial output rate limiting"),
    ]:
        message = vm.fault(method, path, body)
        assert message.startswith("The requested operation is not supported: ") and needle in message, path
        assert message.endswith("not supported by firelet yet."), path
    vm.ok("PUT", "/cpu-config", {})  # an empty template changes nothing
    vm.ok("PUT", "/serial", {})
    assert vm.ok("GET", "/vm/config")["drives"] == []
    assert vm.ok("GET", "/machine-config")["smt"] is False


def test_deprecated_fields_get_a_deprecation_header_and_a_warning(vm: Harness, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="firelet.api"):
        head, _ = _exchange(vm, "PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "None"})
        assert head.startswith(b"HTTP/1.1 204") and b"\r\nDeprecation: true\r\n" in head
        head, _ = _exchange(vm, "PUT", "/vsock", {"guest_cid": 3, "uds_path": "/v", "vsock_id": "v"})
        assert head.startswith(b"HTTP/1.1 400") and b"\r\nDeprecation: true\r\n" in head  # refused, still told
        head, _ = _exchange(vm, "PUT", "/snapshot/load", {"snapshot_path": "/s", "mem_file_path": "/m"})
        assert b"\r\nDeprecation: true\r\n" in head
        head, _ = _exchange(vm, "PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 128})
        assert b"Deprecation" not in head
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "PUT /machine-config: cpu_template field is deprecated.",
        "PUT /vsock: vsock_id field is deprecated.",
        "PUT /snapshot/load: mem_file_path field is deprecated.",
    ]
    assert "cpu_template" not in vm.ok("GET", "/machine-config")


def _exchange(vm: Harness, method: str, path: str, body: Any) -> tuple[bytes, bytes]:
    data = raw_exchange(vm.sock, request_bytes(method, path, body))
    head, _, rest = data.partition(b"\r\n\r\n")
    return head + b"\r\n", rest


def test_empty_and_malformed_bodies_in_firecrackers_words(vm: Harness) -> None:
    assert vm.fault("PUT", "/boot-source").startswith("Empty PUT request.")
    assert vm.fault("PATCH", "/vm").startswith("Empty PATCH request.")
    msg = vm.fault("PUT", "/boot-source", b"{not json")
    assert msg.startswith("An error occurred when deserializing the json body of a request: invalid JSON")
    assert vm.fault("GET", "/machine-config", {"x": 1}) == "GET request cannot have a body."


def test_boot_source_files_are_opened_at_the_put(vm: Harness) -> None:
    missing = str(vm.tmp / "missing")
    assert vm.fault("PUT", "/boot-source", {"kernel_image_path": missing}) == (
        f"Boot source error: The kernel file cannot be opened: No such file or directory (os error 2) "
        f"(kernel_image_path {missing}).")
    assert vm.fault("PUT", "/boot-source", {"kernel_image_path": str(vm.tmp)}).startswith(
        "Boot source error: The kernel file cannot be opened: Is a directory (os error 21)")
    assert vm.fault("PUT", "/boot-source", {**vm.kernel, "initrd_path": missing}).startswith(
        "Boot source error: The initrd file cannot be opened due to invalid path or invalid permissions. "
        "No such file or directory (os error 2)")
    assert vm.ok("GET", "/vm/config")["boot-source"]["kernel_image_path"] == ""  # nothing half-applied
    vm.ok("PUT", "/boot-source", {**vm.kernel, "initrd_path": str(vm.tmp / "new.ext4")})


def test_drive_images_are_opened_at_the_put(vm: Harness) -> None:
    missing = str(vm.tmp / "missing.ext4")
    assert vm.fault("PUT", "/drives/rootfs", {**vm.root, "path_on_host": missing}).startswith(
        "Drive config error: Unable to create the virtio block device: No such file or directory (os error 2)")
    image = vm.tmp / "ro.ext4"
    image.write_bytes(b"\0" * 512)
    image.chmod(0o444)
    body = {"drive_id": "ro", "path_on_host": str(image), "is_root_device": False}
    if os.geteuid() != 0:  # root may write anything; the read-only refusal needs an ordinary user
        assert "Permission denied (os error 13)" in vm.fault("PUT", "/drives/ro", body)
    vm.ok("PUT", "/drives/ro", {**body, "is_read_only": True})


def test_drive_ids_in_path_and_body_must_match(vm: Harness) -> None:
    msg = vm.fault("PUT", "/drives/other", vm.root)
    assert msg.startswith("The id from the path does not match the id from the body!")
    assert "[other]" in msg and "[rootfs]" in msg


def test_only_one_root_drive_and_replacement_by_id(vm: Harness) -> None:
    other = str(vm.tmp / "other.ext4")
    vm.ok("PUT", "/drives/rootfs", vm.root)
    vm.ok("PUT", "/drives/rootfs", {**vm.root, "path_on_host": other})  # same id: replaced
    assert vm.fault("PUT", "/drives/data", {**vm.root, "drive_id": "data"}).startswith(
        "Drive config error: A root block device already exists!")
    vm.ok("PUT", "/drives/data", {**vm.root, "drive_id": "data", "is_root_device": False})
    drives = vm.ok("GET", "/vm/config")["drives"]
    assert [(d["drive_id"], d["path_on_host"]) for d in drives] == [("rootfs", other), ("data", vm.root["path_on_host"])]


def test_instance_start_needs_a_kernel(vm: Harness) -> None:
    assert "boot-source" in vm.fault("PUT", "/actions", {"action_type": "InstanceStart"})
    assert vm.factory_calls == 0


def test_preboot_only_endpoints_refused_after_start(vm: Harness) -> None:
    vm.boot()
    for method, path, body in [
        ("PUT", "/boot-source", vm.kernel), ("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 128}),
        ("PATCH", "/machine-config", {"vcpu_count": 1}), ("PUT", "/drives/rootfs", vm.root),
        ("PUT", "/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": "tap0"}),
        ("PUT", "/vsock", {"guest_cid": 3, "uds_path": "/v.sock"}), ("PUT", "/entropy", {}),
        ("PUT", "/balloon", {"amount_mib": 0, "deflate_on_oom": False}), ("PUT", "/cpu-config", {}),
        ("PUT", "/serial", {}), ("PUT", "/logger", {"level": "Info"}), ("PUT", "/mmds/config", {"network_interfaces": []}),
        ("PUT", "/metrics", {"metrics_path": "/tmp/m"}), ("PUT", "/actions", {"action_type": "InstanceStart"}),
        ("PUT", "/snapshot/load", {"snapshot_path": "/s", "mem_backend": {"backend_type": "File", "backend_path": "/m"}}),
        ("PUT", "/pmem/p0", {"id": "p0", "path_on_host": "/p"}), ("PUT", "/hotplug/memory", {}),
    ]:
        assert vm.fault(method, path, body) == NOT_AFTER_BOOT, path
    assert vm.fake.calls == [("start",)]


def test_postboot_only_endpoints_refused_before_start(vm: Harness) -> None:
    for method, path, body in [
        ("PATCH", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": "/x"}),
        ("PATCH", "/network-interfaces/eth0", {"iface_id": "eth0"}),
        ("PATCH", "/vm", {"state": "Paused"}), ("PUT", "/actions", {"action_type": "SendCtrlAltDel"}),
        ("PUT", "/snapshot/create", {"mem_file_path": "/m", "snapshot_path": "/s"}),
        ("PATCH", "/balloon", {"amount_mib": 1}), ("PATCH", "/balloon/statistics", {"stats_polling_interval_s": 1}),
        ("GET", "/balloon/statistics", None), ("PATCH", "/balloon/hinting/start", None),
        ("PATCH", "/balloon/hinting/start", {"acknowledge_on_stop": True}), ("GET", "/balloon/hinting/status", None),
        ("PATCH", "/balloon/hinting/stop", None), ("PATCH", "/pmem/p0", {"id": "p0"}),
        ("PATCH", "/hotplug/memory", {"requested_size_mib": 0}),
    ]:
        assert vm.fault(method, path, body) == NOT_BEFORE_BOOT, path
    assert vm.factory_calls == 0


def test_pause_resume_ctrl_alt_del(vm: Harness) -> None:
    vm.boot()
    vm.ok("PATCH", "/vm", {"state": "Paused"})
    assert vm.ok("GET", "/")["state"] == "Paused"
    vm.ok("PATCH", "/vm", {"state": "Resumed"})
    assert vm.ok("GET", "/")["state"] == "Running"
    assert "invalid enum value 'Stopped'" in vm.fault("PATCH", "/vm", {"state": "Stopped"})
    vm.ok("PUT", "/actions", {"action_type": "SendCtrlAltDel"})
    assert vm.fake.calls == [("start",), ("pause",), ("resume",), ("ctrl_alt_del",)]
    assert vm.fake.wait(1) == 0


def test_unknown_action_and_paths(vm: Harness) -> None:
    assert "invalid enum value 'Reboot'" in vm.fault("PUT", "/actions", {"action_type": "Reboot"})
    assert vm.fault("GET", "/nope") == "Invalid request method and/or path: GET /nope."
    assert "DELETE /drives/x" in vm.fault("DELETE", "/drives/x")
    assert vm.fault("PUT", "/drives/", vm.root).startswith("The ID cannot be empty.")
    assert "GET /drives/" in vm.fault("GET", "/drives/")
    assert "GET /boot-source" in vm.fault("GET", "/boot-source")


def test_patch_drive_after_boot(vm: Harness) -> None:
    vm.boot()
    new = str(vm.tmp / "new.ext4")
    vm.ok("PATCH", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": new})
    assert ("update_drive", "rootfs", new) in vm.fake.calls
    assert vm.ok("GET", "/vm/config")["drives"][0]["path_on_host"] == new
    assert "No such file or directory (os error 2)" in vm.fault(
        "PATCH", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": "/nonexistent"})
    assert "no drive with drive_id 'zz'" in vm.fault("PATCH", "/drives/zz", {"drive_id": "zz", "path_on_host": new})


def test_drive_rate_limiter_put_patch_and_export(vm: Harness) -> None:
    """PUT takes a limiter; PATCH after boot replaces the buckets it names and keeps the others."""
    bandwidth = {"size": 1_000_000, "refill_time": 100, "one_time_burst": 4096}
    ops = {"size": 200, "refill_time": 1000}
    vm.root = {**vm.root, "rate_limiter": {"bandwidth": bandwidth, "ops": ops}}
    vm.ok("PUT", "/drives/rootfs", vm.root)
    assert vm.ok("GET", "/vm/config")["drives"][0]["rate_limiter"] == {"bandwidth": bandwidth, "ops": {
        **ops, "one_time_burst": None}}
    assert vm.fault("PATCH", "/drives/rootfs", {"drive_id": "rootfs", "rate_limiter": {"ops": ops}}) == (
        "The requested operation is not supported before starting the microVM.")
    vm.boot()  # PUTs vm.root again
    faster = {"size": 2_000_000, "refill_time": 100}
    vm.ok("PATCH", "/drives/rootfs", {"drive_id": "rootfs", "rate_limiter": {"bandwidth": faster}})
    call = vm.fake.calls[-1]
    assert call[:2] == ("update_drive_rate_limiter", "rootfs") and call[2].bandwidth.size == 2_000_000
    exported = vm.ok("GET", "/vm/config")["drives"][0]["rate_limiter"]
    assert exported == {"bandwidth": {**faster, "one_time_burst": None}, "ops": {**ops, "one_time_burst": None}}
    # size 0 lifts a limit (Firecracker's "no bucket"); lifting both leaves no limiter
    vm.ok("PATCH", "/drives/rootfs", {"drive_id": "rootfs", "rate_limiter": {"ops": {"size": 0, "refill_time": 0}}})
    assert vm.ok("GET", "/vm/config")["drives"][0]["rate_limiter"]["ops"] is None
    vm.ok("PATCH", "/drives/rootfs", {"drive_id": "rootfs", "rate_limiter": {"bandwidth": {"size": 5,
                                                                                         "refill_time": 0}}})
    assert vm.ok("GET", "/vm/config")["drives"][0]["rate_limiter"] is None
    for body, needle in [
        ({"drive_id": "rootfs", "rate_limiter": {"ops": {"size": -1, "refill_time": 1}}}, "ops.size: expected int >= 0"),
        ({"drive_id": "rootfs", "rate_limiter": {"ops": {"size": 1, "refill_time": 2**62}}},
         "ops.refill_time: expected int <= 18446744073709"),
        ({"drive_id": "rootfs", "rate_limiter": {"iops": {}}}, "unknown field 'iops'"),
    ]:
        assert needle in vm.fault("PATCH", "/drives/rootfs", body), body
    assert "no drive with drive_id 'zz'" in vm.fault("PATCH", "/drives/zz", {"drive_id": "zz", "rate_limiter": {}})


def test_network_interface_patch_reaches_the_backend(tmp_path: Path) -> None:
    """A configuration that holds an interface (as a future net device will allow) takes rate limiter patches."""
    config = VmConfig(network_interfaces=[NetworkInterface(iface_id="eth0", host_dev_name="tap0")])
    harness = Harness(tmp_path, FakeBackend(), config=config)
    with serve(harness.api, harness.sock):
        harness.boot()
        tx = {"ops": {"size": 10, "refill_time": 100}}
        harness.ok("PATCH", "/network-interfaces/eth0", {"iface_id": "eth0", "tx_rate_limiter": tx})
        exported = harness.ok("GET", "/vm/config")["network-interfaces"][0]["tx_rate_limiter"]
        assert exported == {"bandwidth": None, "ops": {"size": 10, "one_time_burst": None, "refill_time": 100}}
        assert "no network interface has iface_id 'eth1'" in harness.fault(
            "PATCH", "/network-interfaces/eth1", {"iface_id": "eth1"})


def test_balloon_without_a_device(vm: Harness) -> None:
    assert vm.fault("GET", "/balloon").startswith("Balloon config error: No balloon device found.")
    assert vm.fault("PUT", "/balloon", {"amount_mib": 4096, "deflate_on_oom": True}).startswith(
        "Balloon config error: Amount of pages requested is too large.")
    vm.boot()
    for method, path, body in [("PATCH", "/balloon", {"amount_mib": 1}), ("GET", "/balloon/statistics", None),
                               ("PATCH", "/balloon/hinting/start", None), ("GET", "/balloon/hinting/status", None)]:
        assert vm.fault(method, path, body).startswith("Balloon config error: No balloon device found."), path


def test_balloon_rules_once_a_device_exists(tmp_path: Path) -> None:
    """The post-boot rules, with a balloon in the configuration (as the device will allow)."""
    harness = Harness(tmp_path, FakeBackend(), config=VmConfig(balloon=Balloon(amount_mib=64, deflate_on_oom=True)))
    vm = harness
    with serve(vm.api, vm.sock):
        assert vm.ok("GET", "/balloon")["amount_mib"] == 64
        assert "Machine config error" in vm.fault("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 32})
        vm.boot()
        assert "not enabled" in vm.fault("GET", "/balloon/statistics")
        vm.ok("PATCH", "/balloon", {"amount_mib": 8})
        assert ("update_balloon", 8) in vm.fake.calls
        assert vm.fault("PATCH", "/balloon/statistics", {"stats_polling_interval_s": 5}) == (
            "Balloon config error: Cannot enable/disable the statistics after boot.")
        assert "Free page hinting was not enabled" in vm.fault("PATCH", "/balloon/hinting/stop")


def test_mmds_store(vm: Harness) -> None:
    assert vm.ok("GET", "/mmds") == {}
    assert vm.fault("PATCH", "/mmds", {"a": 1}) == "MMDS error: The MMDS data store is not initialized."
    vm.ok("PUT", "/mmds", {"latest": {"meta-data": {"ami-id": "ami-1", "drop": 1}}})
    vm.ok("PATCH", "/mmds", {"latest": {"meta-data": {"drop": None, "new": "x"}}})
    assert vm.ok("GET", "/mmds") == {"latest": {"meta-data": {"ami-id": "ami-1", "new": "x"}}}
    assert "expected object" in vm.fault("PUT", "/mmds", [1])


def test_mmds_config_in_firecrackers_order(vm: Harness) -> None:
    assert vm.fault("PUT", "/mmds/config", {"network_interfaces": []}) == (
        "MMDS config error: The list of network interface IDs that allow forwarding MMDS requests is empty.")
    assert vm.fault("PUT", "/mmds/config", {"network_interfaces": ["eth0"]}).startswith(
        "MMDS config error: The list of network interface IDs provided contains at least one ID that does not "
        "correspond to any existing network interface (eth0)")
    assert "169.254" in vm.fault("PUT", "/mmds/config", {"network_interfaces": ["eth0"], "ipv4_address": "10.0.0.1"})


def test_mmds_size_limit(tmp_path: Path) -> None:
    fake = FakeBackend()
    api = Api(instance_id="x", backend_factory=lambda: fake, mmds_size_limit=64)
    sock = tmp_path / "s"
    with serve(api, sock):
        status, body = call(sock, "PUT", "/mmds", {"k": "v" * 100})
        assert status == 413 and body["fault_message"].startswith(
            "MMDS limit exceeded error: The MMDS patch request doesn't fit.")
        assert call(sock, "PUT", "/mmds", {"k": "v"})[0] == 204
        assert call(sock, "PATCH", "/mmds", {"k2": "v" * 100})[0] == 413
        assert call(sock, "GET", "/mmds") == (200, {"k": "v"})


def test_snapshots_say_not_supported_in_firecrackers_format(vm: Harness) -> None:
    load = {"snapshot_path": "/s", "mem_backend": {"backend_type": "File", "backend_path": "/m"}}
    assert "not supported yet" in vm.fault("PUT", "/snapshot/load", load)
    assert vm.ok("GET", "/")["state"] == "Not started"  # a failed load leaves the API pre-boot
    vm.boot()
    assert "must be paused" in vm.fault("PUT", "/snapshot/create", {"mem_file_path": "/m", "snapshot_path": "/s"})
    vm.ok("PATCH", "/vm", {"state": "Paused"})
    assert "not supported yet" in vm.fault("PUT", "/snapshot/create", {"mem_file_path": "/m", "snapshot_path": "/s"})


def test_snapshot_load_refused_after_boot_resources(vm: Harness) -> None:
    vm.ok("PUT", "/boot-source", vm.kernel)
    assert vm.fault("PUT", "/snapshot/load", {"snapshot_path": "/s", "mem_file_path": "/m"}) == (
        "Load snapshot error: Loading a microVM snapshot not allowed after configuring boot-specific resources.")
    assert "either mem_backend or mem_file_path is required" in vm.fault("PUT", "/snapshot/load", {"snapshot_path": "/s"})


def test_failed_start_reports_the_backend_message_and_allows_retry(tmp_path: Path) -> None:
    fake = FakeBackend(fail_start="kernel /k/vmlinux: no such file")
    harness = Harness(tmp_path, fake)
    with serve(harness.api, harness.sock):
        harness.ok("PUT", "/boot-source", harness.kernel)
        msg = harness.fault("PUT", "/actions", {"action_type": "InstanceStart"})
        assert msg == "Cannot start the microVM: kernel /k/vmlinux: no such file"
        assert harness.ok("GET", "/")["state"] == "Not started"
        fake.fail_start = None
        harness.ok("PUT", "/actions", {"action_type": "InstanceStart"})


def test_factory_failure_is_a_fault_not_a_crash(tmp_path: Path) -> None:
    def factory() -> FakeBackend:
        raise BackendError("the VMM is not available in this firelet build (No module named 'x')")

    api = Api(instance_id="x", backend_factory=factory)
    sock = tmp_path / "s"
    (tmp_path / "vmlinux").write_bytes(b"\0")
    with serve(api, sock):
        assert call(sock, "PUT", "/boot-source", {"kernel_image_path": str(tmp_path / "vmlinux")})[0] == 204
        status, body = call(sock, "PUT", "/actions", {"action_type": "InstanceStart"})
        assert status == 400 and "not available" in body["fault_message"]
        assert call(sock, "GET", "/")[0] == 200


def test_logger_and_metrics_and_flush(vm: Harness) -> None:
    assert "not configured" in vm.fault("PUT", "/actions", {"action_type": "FlushMetrics"})
    log_path, metrics_path = vm.tmp / "fc.log", vm.tmp / "fc.metrics"
    vm.ok("PUT", "/logger", {"log_path": str(log_path), "level": "debug", "show_level": True})
    vm.ok("PUT", "/metrics", {"metrics_path": str(metrics_path)})
    assert "Reinitialization of metrics not allowed." in vm.fault("PUT", "/metrics", {"metrics_path": str(metrics_path)})
    vm.fault("PUT", "/drives/x", vm.root)  # one failure to count
    vm.ok("PUT", "/actions", {"action_type": "FlushMetrics"})
    line = json.loads(metrics_path.read_text().splitlines()[-1])
    assert line["put_api_requests"]["drive_count"] == 1 and line["put_api_requests"]["drive_fails"] == 1
    assert line["put_api_requests"]["actions_count"] == 2
    assert "utc_timestamp_ms" in line and "vcpu" in line and "block" in line
    assert "refused" in log_path.read_text() and ":INFO] API PUT /drives/x refused" in log_path.read_text()
    vm.api.metrics_writer.close()


def test_logger_bad_path_is_a_fault(vm: Harness) -> None:
    assert "Cannot open the log path" in vm.fault("PUT", "/logger", {"log_path": "/nonexistent-dir/x.log"})
    assert "level: expected one of" in vm.fault("PUT", "/logger", {"level": "Loud"})


def test_a_wedged_vmm_call_times_out_and_the_api_keeps_answering(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Like Firecracker, the API waits for the VMM one request at a time, but never forever."""
    from firelet.api import context

    monkeypatch.setattr(context, "CALL_TIMEOUT_S", 0.2)
    release = threading.Event()
    fake = FakeBackend()
    harness = Harness(tmp_path, fake)
    fake.pause = lambda: release.wait(5)  # type: ignore[method-assign]
    with serve(harness.api, harness.sock):
        harness.boot()
        status, body = harness("PATCH", "/vm", {"state": "Paused"})
        release.set()
        assert status == 500 and "did not answer" in body["fault_message"]
        assert harness.ok("GET", "/")["state"] == "Running"
