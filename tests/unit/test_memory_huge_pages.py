"""``huge_pages: "2M"`` on a host whose pool is too small: one line saying what to reserve (issue #12).

The tests ask for one more 2 MiB page than the host has free (read from
/proc/meminfo), so they hold on any host, with or without a pool.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from test_api_cli import _env, _vmm

from firelet.arch.x86_64.ram import guest_ram
from firelet.memory.guest import HUGE_PAGE_SIZE, GuestMemoryError

from api_fake_backend import call, wait_for_api

MiB = 1 << 20


def _free_huge_pages() -> int:
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    return int(info["HugePages_Free"].split()[0]) - int(info["HugePages_Rsvd"].split()[0])


def _short_by_one_mib() -> int:
    return (_free_huge_pages() + 1) * HUGE_PAGE_SIZE // MiB


ADVICE = re.compile(r"^guest memory needs (\d+) 2 MiB huge pages and the host has (\d+) free; reserve them "
                    r"\(as root\): echo (\d+) > /proc/sys/vm/nr_hugepages, or use huge_pages \"None\"$")


def test_a_short_pool_fails_at_mapping_saying_what_to_reserve() -> None:
    mib = _short_by_one_mib()
    with pytest.raises(GuestMemoryError) as info:
        guest_ram(mib * MiB, huge_pages=True)
    match = ADVICE.match(str(info.value))
    assert match, str(info.value)
    need, free, reserve = map(int, match.groups())
    assert need == mib // 2 and free == need - 1 and reserve >= need


def test_instance_start_answers_400_with_the_advice(tmp_path: Path) -> None:
    sock, kernel = tmp_path / "api.sock", tmp_path / "vmlinux"
    kernel.write_bytes(b"\x7fELF")
    proc = subprocess.Popen(_vmm("--api-sock", str(sock)), env=_env(), stderr=subprocess.PIPE)
    try:
        wait_for_api(sock, proc)
        mib = _short_by_one_mib()
        assert call(sock, "PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": mib, "huge_pages": "2M"})[0] == 204
        assert call(sock, "PUT", "/boot-source", {"kernel_image_path": str(kernel)})[0] == 204
        status, body = call(sock, "PUT", "/actions", {"action_type": "InstanceStart"})
        assert status == 400, body
        assert "echo" in body["fault_message"] and "> /proc/sys/vm/nr_hugepages" in body["fault_message"]
        assert call(sock, "GET", "/")[1]["state"] == "Not started"
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stderr:
            proc.stderr.close()


def test_the_config_file_path_exits_with_the_advice(tmp_path: Path) -> None:
    kernel, config = tmp_path / "vmlinux", tmp_path / "vm.json"
    kernel.write_bytes(b"\x7fELF")
    config.write_text(json.dumps({"boot-source": {"kernel_image_path": str(kernel)},
                                  "machine-config": {"vcpu_count": 1, "mem_size_mib": _short_by_one_mib(),
                                                     "huge_pages": "2M"}}))
    result = subprocess.run(_vmm("--no-api", "--config-file", str(config)), env=_env(), capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert "> /proc/sys/vm/nr_hugepages" in result.stderr and len(result.stderr.strip().splitlines()) == 1
