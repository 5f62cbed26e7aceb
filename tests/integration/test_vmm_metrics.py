"""Metrics belong to a VM: two guests in one process count apart; firelet run writes a config's outputs."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import BOOT_TIMEOUT_S, exit_if_the_rig_corrupted_a_vcpu, firelet_cli

MiB = 1 << 20
#: The reader's extra I/O: 8 MiB straight from its data drive, past the page cache.
READ_DATA = "dd if=/dev/vdb of=/dev/null bs=1M count=8 iflag=direct 2>/dev/null; echo read-done"
#: The talker's extra output: 20000 bytes on the serial console, no disk I/O.
TALK = "head -c 20000 /dev/zero | tr '\\0' x; echo; echo talk-done"


def test_two_microvms_in_one_process_keep_their_metrics_apart(kernel, rootfs: Path, tmp_path: Path) -> None:
    from firelet import MicroVM
    from firelet.devtools.images import parse_exit_status

    data = tmp_path / "data.img"
    data.write_bytes(b"\x5a" * (8 * MiB))
    drive = {"drive_id": "data", "path_on_host": str(data), "is_root_device": False, "is_read_only": True}
    reader = MicroVM(kernel.vmlinux, rootfs=rootfs, read_only=True, drives=[drive], cmd=READ_DATA)
    talker = MicroVM(kernel.vmlinux, rootfs=rootfs, read_only=True, drives=[drive], cmd=TALK)
    try:
        reader.start()
        # The talker boots while the reader runs its command, in this one process; not both
        # booting at once: in the rig, a guest once triple-faulted right after its FPU setup
        # while another booted beside it (docs/testing.md).
        reader.wait_for_console("FIRELET-READY", BOOT_TIMEOUT_S)
        talker.start()
        for vm in (reader, talker):
            if vm.vmm.wait(BOOT_TIMEOUT_S) is None:
                exit_if_the_rig_corrupted_a_vcpu("\n".join(vm.vmm.describe_vcpus()))
        texts = [vm.console.text() for vm in (reader, talker)]
        outcomes = [vm.wait(timeout=0) for vm in (reader, talker)]
    finally:
        reader.close()
        talker.close()
    for outcome, text in zip(outcomes, texts, strict=False):
        assert outcome.clean and parse_exit_status(text) == 0, f"{outcome}\n{text[-3000:]}"
    assert "read-done" in texts[0] and "talk-done" in texts[1]
    r, t = reader.metrics, talker.metrics
    # Both read the same root filesystem at boot; only the reader read its data drive too.
    assert r["block"]["read_bytes"] - t["block"]["read_bytes"] >= 8 * MiB - MiB, (r["block"], t["block"])
    assert t["block"]["read_bytes"] > 0
    # Only the talker wrote 20000 bytes more to its console; each VM counted its own bytes.
    assert t["uart"]["write_count"] - r["uart"]["write_count"] >= 19000, (r["uart"], t["uart"])
    for metrics, text in ((r, texts[0]), (t, texts[1])):
        assert metrics["uart"]["write_count"] >= len(text.encode()) * 0.9
        assert metrics["vcpu"]["exit_io_out"] > 0


def test_firelet_run_writes_the_config_files_log_metrics_and_serial(kernel, rootfs: Path, tmp_path: Path) -> None:
    from firelet.builder.boot import DEFAULT_BOOT_ARGS
    from firelet.devtools.images import guest_cmdline_for

    paths = {name: tmp_path / name for name in ("log", "metrics", "serial")}
    config = {
        "boot-source": {"kernel_image_path": str(kernel.vmlinux),
                        "boot_args": f"{DEFAULT_BOOT_ARGS} {guest_cmdline_for('echo serial-to-file')}"},
        "drives": [{"drive_id": "rootfs", "path_on_host": str(rootfs), "is_root_device": True,
                    "is_read_only": True}],
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
        "logger": {"log_path": str(paths["log"]), "level": "Info", "show_level": True},
        "metrics": {"metrics_path": str(paths["metrics"])},
        "serial": {"serial_out_path": str(paths["serial"])},
    }
    config_file = tmp_path / "vm.json"
    config_file.write_text(json.dumps(config))
    result = firelet_cli("run", "--config-file", str(config_file))
    assert result.returncode == 0, result.stderr
    assert "serial-to-file" not in result.stdout  # the console went to serial_out_path
    assert "serial-to-file" in paths["serial"].read_text(errors="replace")
    lines = [json.loads(line) for line in paths["metrics"].read_text().splitlines()]
    assert lines and sum(line["block"]["read_bytes"] for line in lines) > 0
    assert sum(line["uart"]["write_count"] for line in lines) >= paths["serial"].stat().st_size * 0.9
    log = paths["log"].read_text()
    assert "[anonymous-instance:MainThread:INFO] Running firelet v" in log
