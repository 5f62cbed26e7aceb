"""Each endpoint's answers and Firecracker's state rules, over a real Unix socket."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_fake_backend import FakeBackend, call, serve

from firelet.controller.interface import BackendError
from firelet.api.routes import Api
from firelet.api.routing import NOT_AFTER_BOOT, NOT_BEFORE_BOOT
from firelet.metrics import Metrics

KERNEL = {"kernel_image_path": "/k/vmlinux", "boot_args": "console=ttyS0"}
ROOT = {"drive_id": "rootfs", "path_on_host": "/r.ext4", "is_root_device": True, "is_read_only": False}


class Harness:
    def __init__(self, tmp_path: Path, fake: FakeBackend) -> None:
        self.fake = fake
        self.factory_calls = 0
        self.metrics = Metrics()
        self.api = Api(instance_id="test-vm", backend_factory=self._factory, metrics=self.metrics)
        self.sock = tmp_path / "api.sock"
        self.tmp = tmp_path

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
        self.ok("PUT", "/boot-source", KERNEL)
        self.ok("PUT", "/drives/rootfs", ROOT)
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
    vm.ok("PUT", "/machine-config", {"vcpu_count": 4, "mem_size_mib": 512, "smt": True})
    vm.ok("PATCH", "/machine-config", {"mem_size_mib": 1024})
    got = vm.ok("GET", "/machine-config")
    assert (got["vcpu_count"], got["mem_size_mib"], got["smt"]) == (4, 1024, True)
    # PUT resets what it omits, as Firecracker's does.
    vm.ok("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 128})
    assert vm.ok("GET", "/machine-config")["smt"] is False


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


def test_patch_machine_config_is_checked_as_a_whole(vm: Harness) -> None:
    vm.ok("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 256, "smt": True})
    assert "with smt enabled" in vm.fault("PATCH", "/machine-config", {"vcpu_count": 3})
    assert "unknown field 'x'" in vm.fault("PATCH", "/machine-config", {"x": 1})


def test_empty_and_malformed_bodies(vm: Harness) -> None:
    assert "Empty request body" in vm.fault("PUT", "/boot-source")
    assert "invalid JSON" in vm.fault("PUT", "/boot-source", b"{not json")


def test_drive_ids_in_path_and_body_must_match(vm: Harness) -> None:
    msg = vm.fault("PUT", "/drives/other", ROOT)
    assert "[other]" in msg and "[rootfs]" in msg


def test_only_one_root_drive_and_replacement_by_id(vm: Harness) -> None:
    vm.ok("PUT", "/drives/rootfs", ROOT)
    vm.ok("PUT", "/drives/rootfs", {**ROOT, "path_on_host": "/other.ext4"})  # same id: replaced
    assert "only one drive may be the root device" in vm.fault(
        "PUT", "/drives/data", {**ROOT, "drive_id": "data"})
    vm.ok("PUT", "/drives/data", {**ROOT, "drive_id": "data", "is_root_device": False})
    drives = vm.ok("GET", "/vm/config")["drives"]
    assert [(d["drive_id"], d["path_on_host"]) for d in drives] == [("rootfs", "/other.ext4"), ("data", "/r.ext4")]


def test_instance_start_needs_a_kernel(vm: Harness) -> None:
    assert "boot-source" in vm.fault("PUT", "/actions", {"action_type": "InstanceStart"})
    assert vm.factory_calls == 0


def test_preboot_only_endpoints_refused_after_start(vm: Harness) -> None:
    vm.boot()
    for method, path, body in [
        ("PUT", "/boot-source", KERNEL), ("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 128}),
        ("PATCH", "/machine-config", {"vcpu_count": 1}), ("PUT", "/drives/rootfs", ROOT),
        ("PUT", "/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": "tap0"}),
        ("PUT", "/vsock", {"guest_cid": 3, "uds_path": "/v.sock"}), ("PUT", "/entropy", {}),
        ("PUT", "/balloon", {"amount_mib": 0, "deflate_on_oom": False}), ("PUT", "/cpu-config", {}),
        ("PUT", "/serial", {}), ("PUT", "/logger", {"level": "Info"}), ("PUT", "/mmds/config", {"network_interfaces": []}),
        ("PUT", "/metrics", {"metrics_path": "/tmp/m"}), ("PUT", "/actions", {"action_type": "InstanceStart"}),
        ("PUT", "/snapshot/load", {"snapshot_path": "/s", "mem_file_path": "/m"}),
    ]:
        assert vm.fault(method, path, body) == NOT_AFTER_BOOT, path
    assert vm.fake.calls == [("start",)]


def test_postboot_only_endpoints_refused_before_start(vm: Harness) -> None:
    for method, path, body in [
        ("PATCH", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": "/x"}),
        ("PATCH", "/network-interfaces/eth0", {"iface_id": "eth0"}),
        ("PATCH", "/vm", {"state": "Paused"}), ("PUT", "/actions", {"action_type": "SendCtrlAltDel"}),
        ("PUT", "/snapshot/create", {"mem_file_path": "/m", "snapshot_path": "/s"}),
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
    assert "PUT /drives/" in vm.fault("PUT", "/drives/", ROOT)
    assert "GET /boot-source" in vm.fault("GET", "/boot-source")


def test_patch_drive_after_boot(vm: Harness) -> None:
    vm.boot()
    vm.ok("PATCH", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": "/new.ext4"})
    assert ("update_drive", "rootfs", "/new.ext4") in vm.fake.calls
    assert vm.ok("GET", "/vm/config")["drives"][0]["path_on_host"] == "/new.ext4"
    assert "No such file" in vm.fault("PATCH", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": "/nonexistent"})
    assert "No drive with drive_id 'zz'" in vm.fault("PATCH", "/drives/zz", {"drive_id": "zz", "path_on_host": "/x"})
    limiter = {"bandwidth": {"size": 1, "refill_time": 1}}
    assert "not supported yet" in vm.fault("PATCH", "/drives/rootfs", {"drive_id": "rootfs", "rate_limiter": limiter})


def test_network_interfaces_put_and_patch(vm: Harness) -> None:
    vm.ok("PUT", "/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:00:00:00:01"})
    assert "host_dev_name 'tap0' is used by more than one" in vm.fault(
        "PUT", "/network-interfaces/eth1", {"iface_id": "eth1", "host_dev_name": "tap0"})
    vm.boot()
    tx = {"ops": {"size": 10, "refill_time": 100}}
    vm.ok("PATCH", "/network-interfaces/eth0", {"iface_id": "eth0", "tx_rate_limiter": tx})
    assert vm.ok("GET", "/vm/config")["network-interfaces"][0]["tx_rate_limiter"] == tx


def test_balloon_rules(vm: Harness) -> None:
    assert "No balloon device" in vm.fault("GET", "/balloon")
    assert "No balloon device" in vm.fault("PATCH", "/balloon", {"amount_mib": 1})
    assert "at most the guest memory" in vm.fault("PUT", "/balloon", {"amount_mib": 4096, "deflate_on_oom": True})
    vm.ok("PUT", "/balloon", {"amount_mib": 16, "deflate_on_oom": True})
    assert "not enabled" in vm.fault("GET", "/balloon/statistics")
    vm.ok("PATCH", "/balloon/statistics", {"stats_polling_interval_s": 2})  # pre-boot: may turn on
    vm.ok("PATCH", "/balloon", {"amount_mib": 32})
    assert vm.ok("GET", "/balloon")["amount_mib"] == 32
    assert vm.fault("GET", "/balloon/statistics") == NOT_BEFORE_BOOT
    vm.boot()
    assert vm.ok("GET", "/balloon/statistics")["target_mib"] == 32
    vm.ok("PATCH", "/balloon", {"amount_mib": 8})
    assert ("update_balloon", 8) in vm.fake.calls
    assert "cannot be turned on or off" in vm.fault("PATCH", "/balloon/statistics", {"stats_polling_interval_s": 0})
    vm.ok("PATCH", "/balloon/statistics", {"stats_polling_interval_s": 5})
    assert ("update_balloon_stats", 5) in vm.fake.calls


def test_mmds_store(vm: Harness) -> None:
    assert vm.ok("GET", "/mmds") == {}
    assert "not initialized" in vm.fault("PATCH", "/mmds", {"a": 1})
    vm.ok("PUT", "/mmds", {"latest": {"meta-data": {"ami-id": "ami-1", "drop": 1}}})
    vm.ok("PATCH", "/mmds", {"latest": {"meta-data": {"drop": None, "new": "x"}}})
    assert vm.ok("GET", "/mmds") == {"latest": {"meta-data": {"ami-id": "ami-1", "new": "x"}}}
    assert "expected object" in vm.fault("PUT", "/mmds", [1])
    assert "no network interface has iface_id 'eth0'" in vm.fault("PUT", "/mmds/config", {"network_interfaces": ["eth0"]})


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
    msg = vm.fault("PUT", "/snapshot/load", {"snapshot_path": "/s", "mem_file_path": "/m"})
    assert "not supported yet" in msg
    assert vm.ok("GET", "/")["state"] == "Not started"  # a failed load leaves the API pre-boot
    vm.boot()
    assert "must be paused" in vm.fault("PUT", "/snapshot/create", {"mem_file_path": "/m", "snapshot_path": "/s"})
    vm.ok("PATCH", "/vm", {"state": "Paused"})
    assert "not supported yet" in vm.fault("PUT", "/snapshot/create", {"mem_file_path": "/m", "snapshot_path": "/s"})


def test_snapshot_load_refused_after_boot_resources(vm: Harness) -> None:
    vm.ok("PUT", "/boot-source", KERNEL)
    assert "boot-specific resources" in vm.fault("PUT", "/snapshot/load", {"snapshot_path": "/s", "mem_file_path": "/m"})
    assert "exactly one of mem_backend and mem_file_path" in vm.fault("PUT", "/snapshot/load", {"snapshot_path": "/s"})


def test_failed_start_reports_the_backend_message_and_allows_retry(tmp_path: Path) -> None:
    fake = FakeBackend(fail_start="kernel /k/vmlinux: no such file")
    harness = Harness(tmp_path, fake)
    with serve(harness.api, harness.sock):
        harness.ok("PUT", "/boot-source", KERNEL)
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
    with serve(api, sock):
        call(sock, "PUT", "/boot-source", KERNEL)
        status, body = call(sock, "PUT", "/actions", {"action_type": "InstanceStart"})
        assert status == 400 and "not available" in body["fault_message"]
        assert call(sock, "GET", "/")[0] == 200


def test_logger_and_metrics_and_flush(vm: Harness) -> None:
    assert "not configured" in vm.fault("PUT", "/actions", {"action_type": "FlushMetrics"})
    log_path, metrics_path = vm.tmp / "fc.log", vm.tmp / "fc.metrics"
    vm.ok("PUT", "/logger", {"log_path": str(log_path), "level": "debug", "show_level": True})
    vm.ok("PUT", "/metrics", {"metrics_path": str(metrics_path)})
    assert "already configured" in vm.fault("PUT", "/metrics", {"metrics_path": str(metrics_path)})
    vm.fault("PUT", "/drives/x", ROOT)  # one failure to count
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


def test_vm_config_matches_config_file_shape(vm: Harness) -> None:
    from firelet.config.model import decode_config

    vm.ok("PUT", "/boot-source", KERNEL)
    vm.ok("PUT", "/drives/rootfs", ROOT)
    vm.ok("PUT", "/vsock", {"guest_cid": 3, "uds_path": "/v.sock"})
    exported = vm.ok("GET", "/vm/config")
    assert decode_config(json.dumps(exported).encode()) == vm.api.config


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
