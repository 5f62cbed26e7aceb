"""Deciding whether the local /dev/kvm can boot stock Linux, on fake /proc and /sys trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from firelet.devtools.nested.detect import local_kvm_runs_stock_guests


def _root(tmp_path: Path, *, kvm: bool = True, sys_modules: tuple[str, ...] = (),
          proc_modules: tuple[str, ...] = (), flags: str = "fpu sse2") -> Path:
    (tmp_path / "dev").mkdir()
    if kvm:
        (tmp_path / "dev/kvm").write_text("")
    for name in sys_modules:
        (tmp_path / "sys/module" / name).mkdir(parents=True)
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/modules").write_text("".join(f"{m} 1 0 - Live 0x0\n" for m in proc_modules))
    (tmp_path / "proc/cpuinfo").write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    return tmp_path


def test_pvm_is_not_enough(tmp_path: Path) -> None:
    ok, why = local_kvm_runs_stock_guests(_root(tmp_path, sys_modules=("kvm", "kvm_pvm")), {})
    assert not ok and "kvm_pvm" in why


def test_pvm_seen_in_proc_modules(tmp_path: Path) -> None:
    ok, _ = local_kvm_runs_stock_guests(_root(tmp_path, proc_modules=("kvm_pvm", "kvm")), {})
    assert not ok


def test_missing_dev_kvm(tmp_path: Path) -> None:
    ok, why = local_kvm_runs_stock_guests(_root(tmp_path, kvm=False, sys_modules=("kvm_intel",)), {})
    assert not ok and "missing" in why


@pytest.mark.parametrize("module", ["kvm_intel", "kvm_amd"])
def test_hardware_kvm(tmp_path: Path, module: str) -> None:
    ok, why = local_kvm_runs_stock_guests(_root(tmp_path, sys_modules=("kvm", module)), {})
    assert ok and module in why


def test_cpu_flags_when_modules_are_not_visible(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert local_kvm_runs_stock_guests(_root(tmp_path / "a", flags="fpu vmx sse2"), {})[0]
    assert not local_kvm_runs_stock_guests(_root(tmp_path / "b", flags="fpu sse2"), {})[0]


def test_inside_the_rig(tmp_path: Path) -> None:
    ok, why = local_kvm_runs_stock_guests(_root(tmp_path, sys_modules=("kvm_pvm",)), {"FIRELET_IN_RIG": "1"})
    assert ok and "rig" in why


def test_env_override_wins(tmp_path: Path) -> None:
    root = _root(tmp_path, sys_modules=("kvm_amd",))
    assert local_kvm_runs_stock_guests(root, {"FIRELET_KVM": "nested"}) == (False, "FIRELET_KVM=nested")
    pvm = tmp_path / "pvm"
    pvm.mkdir()
    assert local_kvm_runs_stock_guests(_root(pvm, sys_modules=("kvm_pvm",)), {"FIRELET_KVM": "direct"})[0]
