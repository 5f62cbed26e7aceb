"""Can this machine's ``/dev/kvm`` boot a stock Linux guest, or do we need the rig?

Some hosts offer a paravirtual ``/dev/kvm`` (``kvm_pvm``): it answers every
KVM ioctl but emulates non-PVM guest code instruction by instruction and dies
on a stock kernel (shared/facts/nested-kvm.md). Hardware KVM (``kvm_intel`` or
``kvm_amd``, CPU flag vmx or svm) runs them, and so does the rig itself.

Override with ``FIRELET_KVM=direct`` (use the local /dev/kvm as is) or
``FIRELET_KVM=nested`` (always go through the rig).
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_OVERRIDE = "FIRELET_KVM"
ENV_IN_RIG = "FIRELET_IN_RIG"


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _loaded_modules(root: Path) -> set[str]:
    names = {line.split()[0] for line in _read(root / "proc/modules").splitlines() if line.strip()}
    sysmod = root / "sys/module"
    for name in ("kvm_pvm", "kvm_intel", "kvm_amd"):
        if (sysmod / name).is_dir():
            names.add(name)
    return names


def _cpu_has_virt(root: Path) -> bool:
    for line in _read(root / "proc/cpuinfo").splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return bool(flags & {"vmx", "svm"})
    return False


def local_kvm_runs_stock_guests(root: Path = Path("/"),
                                environ: dict[str, str] | None = None) -> tuple[bool, str]:
    """``(True, why)`` when the local /dev/kvm boots stock Linux, else ``(False, why not)``.

    ``root`` lets tests point at a fake tree holding ``dev/``, ``proc/`` and ``sys/``.
    """
    env = os.environ if environ is None else environ
    override = env.get(ENV_OVERRIDE, "").strip().lower()
    if override == "direct":
        return True, f"{ENV_OVERRIDE}=direct"
    if override == "nested":
        return False, f"{ENV_OVERRIDE}=nested"
    if env.get(ENV_IN_RIG) == "1":
        return True, "inside the nested rig (kvm-amd on QEMU's SVM)"
    if not (root / "dev/kvm").exists():
        return False, "/dev/kvm is missing"
    modules = _loaded_modules(root)
    if "kvm_pvm" in modules:
        return False, "/dev/kvm is the paravirtual kvm_pvm, which cannot run stock Linux guests"
    if modules & {"kvm_intel", "kvm_amd"}:
        return True, "hardware KVM (" + ", ".join(sorted(modules & {"kvm_intel", "kvm_amd"})) + ")"
    if _cpu_has_virt(root):
        return True, "the CPU has vmx/svm and /dev/kvm exists"
    return False, "no kvm_intel/kvm_amd module and no vmx/svm CPU flag: /dev/kvm is not hardware KVM"
