"""fleet up --memory-check: members counted at their full guest size, refused by id when they would not fit;
without it, members oversubscribe the host's memory."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firelet.devtools.images.tiny import elf
from firelet.launcher.fleet import Fleet
from firelet.launcher.memory import HOST_RESERVE_MIB, VMM_OVERHEAD_MIB, MemoryBudget, available_mib, guest_mib

from launcher_utils import ended, short_workdir


@pytest.fixture
def workdir() -> Iterator[Path]:
    yield from short_workdir()


def test_available_memory_comes_from_meminfo(tmp_path: Path) -> None:
    assert 0 < available_mib() < 1 << 30
    (tmp_path / "meminfo").write_text("MemTotal:       1000 kB\nMemAvailable:   5242880 kB\n")
    assert available_mib(str(tmp_path / "meminfo")) == 5120
    (tmp_path / "meminfo").write_text("MemTotal:       1000 kB\n")
    with pytest.raises(OSError, match="no MemAvailable"):
        available_mib(str(tmp_path / "meminfo"))


@pytest.mark.parametrize(("config", "mib"), [
    ({"machine-config": {"mem_size_mib": 256}}, 256), ({}, 0), ({"machine-config": None}, 0),
    ({"machine-config": {"mem_size_mib": "256"}}, 0), ({"machine-config": {"mem_size_mib": True}}, 0),
    ({"machine-config": {"mem_size_mib": -5}}, 0)])
def test_a_configs_guest_size(config: dict[str, object], mib: int) -> None:
    assert guest_mib(config) == mib


@given(available=st.integers(0, 1 << 20), guests=st.lists(st.integers(1, 1 << 16), max_size=40),
       running=st.lists(st.tuples(st.integers(1, 1 << 16), st.integers(0, 1 << 26)), max_size=10))
def test_admitted_members_never_exceed_what_is_left(available: int, guests: list[int],
                                                    running: list[tuple[int, int]]) -> None:
    budget = MemoryBudget.measure(running, available)
    left = budget.left_mib
    admitted = 0
    for i, guest in enumerate(guests):
        refused = budget.admit(f"vm-{i}", guest)
        if refused is None:
            admitted += guest + VMM_OVERHEAD_MIB
        else:
            assert refused.startswith(f"vm-{i}: not launched:") and "--memory-check" in refused and "\n" not in refused
            assert guest + VMM_OVERHEAD_MIB > left - admitted  # refused only what did not fit
    assert admitted <= max(0, left)


def test_a_running_member_owes_what_it_has_not_touched_yet() -> None:
    budget = MemoryBudget.measure([(1024, 200 * 1024), (64, 500 * 1024)], available=4096)
    assert budget.owed_mib == 1024 + VMM_OVERHEAD_MIB - 200  # the second has touched more than its size
    assert budget.left_mib == 4096 - HOST_RESERVE_MIB - budget.owed_mib


def test_fleet_up_refuses_by_id_what_memory_cannot_hold_and_counts_running_members(workdir: Path) -> None:
    """Real launcher, real firelet-vmm children running a halting guest on the host's KVM."""
    (workdir / "vmlinux").write_bytes(elf(bytes.fromhex("f4ebfd")))  # hlt; jmp hlt
    guest = 1024
    (workdir / "config.json").write_text(json.dumps({
        "boot-source": {"kernel_image_path": str(workdir / "vmlinux"), "boot_args": "console=ttyS0"},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": guest}}))
    available = HOST_RESERVE_MIB + 3 * (guest + VMM_OVERHEAD_MIB) + 50  # room for three untouched guests
    fleet = Fleet.open(workdir / "f", start=True)
    try:
        first = fleet.up(2, workdir / "config.json", available_mib=available, ready_timeout_s=60, memory_check=True)
        assert [m.error for m in first] == [None, None]
        # Two run and have touched little of their 1 GiB: they still owe nearly all of it.
        second = fleet.up(2, workdir / "config.json", available_mib=available, ready_timeout_s=60, memory_check=True)
        assert second[0].error is None, second[0].error
        assert second[1].error is not None and second[1].error.startswith("vm-4: not launched:")
        assert "--memory-check" in second[1].error
        assert not (workdir / "f" / "vm-4").exists()  # refused before anything was made for it
        assert {vm["id"] for vm in fleet.list() if vm["state"] == "running"} == {"vm-1", "vm-2", "vm-3"}
        third = fleet.up(1, workdir / "config.json", available_mib=available, ready_timeout_s=60)
        assert third[0].error is None and third[0].id == "vm-4"
    finally:
        pids = [vm["pid"] for vm in fleet.list()]
        fleet.shutdown()
        fleet.close()
    assert all(ended(pid) for pid in pids)
