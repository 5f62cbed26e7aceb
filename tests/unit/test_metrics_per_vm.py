"""Each VM owns its metrics: separate counters, device counters folded in at every reading."""

from __future__ import annotations

import json
from pathlib import Path

from firelet.devices.virtio.block import Block
from firelet.metrics import Metrics, MetricsWriter
from firelet.vstate.device_metrics import fold_device_metrics
from firelet.vstate.device_registry import BusKind, DeviceEntry, DeviceRegistry, Slot
from firelet.vstate.vcpu import Vcpu, VcpuGate


def _disk(tmp_path: Path, name: str) -> Block:
    path = tmp_path / f"{name}.img"
    path.write_bytes(bytes(1 << 16))
    return Block(path, drive_id=name)


def _registry(**disks: Block) -> DeviceRegistry:
    registry = DeviceRegistry()
    for n, (drive_id, disk) in enumerate(disks.items()):
        registry.add(DeviceEntry("block", drive_id, disk, Slot(BusKind.MMIO, ((0xD0000000 + n * 0x1000, 0x1000),))))
    return registry


def test_two_vms_count_apart_and_their_devices_are_folded_in_at_each_reading(tmp_path: Path) -> None:
    a_root, a_data, b_root = _disk(tmp_path, "a-root"), _disk(tmp_path, "a-data"), _disk(tmp_path, "b-root")
    devices_a, devices_b = _registry(root=a_root, data=a_data), _registry(root=b_root)
    metrics_a, metrics_b = Metrics(), Metrics()
    metrics_a.add_source(lambda: fold_device_metrics(devices_a, metrics_a))
    metrics_b.add_source(lambda: fold_device_metrics(devices_b, metrics_b))
    a_root.metrics.read_bytes += 4096  # what the devices count as they serve requests
    a_data.metrics.read_bytes += 512
    a_data.metrics.write_ops += 3
    b_root.metrics.flush_ops += 1
    metrics_a.vcpu.exit_io_out += 7
    assert metrics_a.totals()["block"]["read_bytes"] == 4608 and metrics_a.totals()["block"]["write_count"] == 3
    assert metrics_b.totals()["block"]["read_bytes"] == 0 and metrics_b.totals()["block"]["flush_count"] == 1
    assert metrics_b.totals()["vcpu"]["exit_io_out"] == 0
    first = metrics_a.deltas()
    a_root.metrics.read_bytes += 100
    second = metrics_a.deltas()
    assert first["block"]["read_bytes"] == 4608 and second["block"]["read_bytes"] == 100
    for disk in (a_root, a_data, b_root):
        disk.close()


def test_a_metrics_file_line_keeps_firecrackers_shape_and_carries_device_counts(tmp_path: Path) -> None:
    root = _disk(tmp_path, "root")
    devices = _registry(root=root)
    metrics = Metrics()
    metrics.add_source(lambda: fold_device_metrics(devices, metrics))
    writer = MetricsWriter(str(tmp_path / "m.json"), metrics, interval_s=3600)
    root.metrics.write_bytes += 8192
    writer.close()  # the last line, as firelet-vmm and MicroVM.close write it
    line = json.loads((tmp_path / "m.json").read_text())
    assert list(line) == ["utc_timestamp_ms", "api_server", "get_api_requests", "put_api_requests",
                          "patch_api_requests", "vcpu", "block", "net", "rate_limiter", "uart", "logger"]
    assert list(line["logger"]) == ["missed_log_count", "missed_metrics_count", "metrics_fails"]
    assert line["block"]["write_bytes"] == 8192
    root.close()


def test_a_vcpu_without_a_vms_metrics_counts_in_its_own_not_a_shared_one() -> None:
    one = Vcpu(0, None, io_bus=None, mmio_bus=None, gate=VcpuGate(), on_exit=print)  # type: ignore[arg-type] - never run
    two = Vcpu(1, None, io_bus=None, mmio_bus=None, gate=VcpuGate(), on_exit=print)  # type: ignore[arg-type] - never run
    one.metrics.exit_io_in += 1
    assert two.metrics.exit_io_in == 0
    vm = Metrics()
    three = Vcpu(2, None, io_bus=None, mmio_bus=None, gate=VcpuGate(), on_exit=print, metrics=vm.vcpu)  # type: ignore[arg-type] - never run
    three.metrics.exit_mmio_read += 2
    assert vm.totals()["vcpu"]["exit_mmio_read"] == 2
