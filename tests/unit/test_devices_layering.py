"""Devices sit below the runtime: no module in firelet/devices imports KVM, the running VM or anything above it.

A device gets everything it needs handed in (an Interrupt, guest memory, a
callback to defer work onto the event loop), so it can be tested alone and
reused by a builder that restores from a snapshot instead of booting.
"""

from __future__ import annotations

import ast
from pathlib import Path

import firelet.devices

#: Packages a device must not import, even lazily or only for type checking.
ABOVE_DEVICES = ("kvm", "events", "vstate", "config", "builder", "controller", "api", "microvm", "cli", "devtools")


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_no_device_module_imports_the_runtime_or_above() -> None:
    root = Path(firelet.devices.__file__).parent
    modules = sorted(root.rglob("*.py"))
    assert len(modules) > 10  # the walk found the package
    upward = [f"{path.relative_to(root)}: {name}" for path in modules for name in _imports(path)
              if any(name == f"firelet.{p}" or name.startswith(f"firelet.{p}.") for p in ABOVE_DEVICES)]
    assert upward == []


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from firelet.vstate.vmm import Vmm\n    import firelet.kvm.ioctls\n")
    assert _imports(module) == ["firelet.vstate.vmm", "firelet.kvm.ioctls"]
