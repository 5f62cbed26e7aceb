"""firelet's import structure: layers one way, no cycles, and a VMM start path without developer tooling.

Every import in ``firelet/`` counts, at the top of a module, inside a function or
under ``TYPE_CHECKING``: an import deferred to a function is still a dependency,
and a cycle hidden that way is still a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import NamedTuple

import firelet

# The layers, low to high. A module may import from its own layer and from the
# layers below it, never from a layer above. A name stands for the module or
# package and everything under it.
LAYERS: list[tuple[str, ...]] = [
    # The foundation every layer may use: error types, the lazy logger, the metrics
    # registry and the Firecracker-style log/metrics writer, the snapshot records, the
    # seccomp filters (every VMM thread installs its own).
    ("firelet.errors", "firelet.log", "firelet.metrics", "firelet.logs", "firelet.snapshot", "firelet.seccomp",
     "firelet.guest",
     "firelet.records", "firelet.threads"),
    ("firelet.kvm",),         # thin bindings: /dev/kvm, VM and vCPU fds, the kernel's structures
    ("firelet.memory",),      # guest RAM
    ("firelet.arch",),        # x86-64: memory layout, kernel loader, boot params, PVH, MP table, regs, CPUID
    ("firelet.events",),      # the epoll event loop
    ("firelet.devices",),     # devices and their protocols: legacy, pseudo, virtio
    ("firelet.vstate",),      # the running VM: vCPU threads, buses, exits
    ("firelet.config",),      # the validated configuration model
    ("firelet.mmds",),        # the microVM metadata store
    ("firelet.builder",),     # configuration -> a running VM
    ("firelet.controller",),  # what the API needs from the VMM, and the real one
    ("firelet.api",),         # the HTTP API: server and routes
    ("firelet.outputs",),     # the logger, metrics and serial files of a config (MicroVM, firelet run)
    ("firelet.microvm",),     # the Python library API
    # Beside the VMM: the jailer, host networking (TAPs, namespaces, NAT) and the developer
    # tooling (guest images, the nested rig). They may use the runtime; the runtime never imports them.
    ("firelet.jailer", "firelet.hostnet", "firelet.devtools"),
    # firelet-vmm's own command: the program the launcher's children run (they call its main).
    ("firelet.cli.vmm", "firelet.cli.vmm_setup", "firelet.cli.lean"),
    # The warm launcher and the fleet: fork VMMs from a warm parent. The VMM never imports them.
    ("firelet.launcher",),
    ("firelet.cli", "firelet.__main__"),  # the commands
]

# The API reaches the VMM only through the controller's interface: from these
# packages, the api may import nothing but the listed modules.
NARROW_DOORS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "firelet.api": (
        ("firelet.kvm", "firelet.memory", "firelet.arch", "firelet.events", "firelet.devices",
         "firelet.vstate", "firelet.builder", "firelet.controller"),
        ("firelet.controller.interface",),
    ),
}

# Known violations: none are left. An entry would keep the tests green while it lasted; once
# its import was gone, the test below would fail until the entry was deleted. Add nothing.
KNOWN_VIOLATIONS: set[str] = set()

# What the VMM process (firelet-vmm) must never load, on any path it can take.
NOT_FOR_THE_VMM = ("firelet.devtools", "firelet.hostnet", "firelet.cli.build", "firelet.cli.demo",
                   "firelet.cli.nested", "firelet.cli.net", "firelet.launcher", "firelet.cli.launcher",
                   "firelet.cli.fleet")

PACKAGE_DIR = Path(firelet.__file__).resolve().parent


class Import(NamedTuple):
    importer: str
    imported: str
    line: int
    where: str  # "top", "function" or "TYPE_CHECKING"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The firelet modules one import statement loads (``from pkg import mod`` names ``pkg.mod``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == "firelet"]
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        base = package[: len(package) - node.level + 1]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    if source.split(".")[0] != "firelet":
        return []
    modules = _modules()
    return [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names]


@cache
def _imports() -> tuple[Import, ...]:
    found: list[Import] = []
    for module, path in _modules().items():
        is_package = path.name == "__init__.py"

        def visit(node: ast.AST, where: str, module: str = module, is_package: bool = is_package) -> None:
            for child in ast.iter_child_nodes(node):
                inner = where
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                    inner = "function"
                elif isinstance(child, ast.If) and _is_type_checking(child.test) and where == "top":
                    inner = "TYPE_CHECKING"
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    for target in _targets(child, module, is_package):
                        if target != module:
                            found.append(Import(module, target, child.lineno, inner))
                visit(child, inner)

        visit(ast.parse(path.read_text(), filename=str(path)), "top")
    return tuple(found)


def _graph_imports() -> list[Import]:
    """Imports that form the dependency graph. The package root only re-exports
    MicroVM lazily and holds ``__version__`` (checked on its own below)."""
    return [i for i in _imports() if "firelet" not in (i.importer, i.imported)]


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _unit(module: str) -> tuple[int, str] | None:
    """The layer index and the table entry (package or module) that ``module`` belongs to."""
    best: tuple[int, str] | None = None
    for index, names in enumerate(LAYERS):
        for prefix in names:
            if _under(module, prefix) and (best is None or len(prefix) > len(best[1])):
                best = (index, prefix)
    return best


def _cycles(edges: set[tuple[str, str]]) -> set[str]:
    """One entry per strongly connected component of more than one node (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[str] = set()

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                connect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.add("cycle: " + " <-> ".join(sorted(component)))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def _module_cycles() -> set[str]:
    return _cycles({(i.importer, i.imported) for i in _graph_imports()})


def _package_cycles() -> set[str]:
    edges = set()
    for i in _graph_imports():
        a, b = _unit(i.importer), _unit(i.imported)
        if a is not None and b is not None and a[1] != b[1]:
            edges.add((a[1], b[1]))
    return _cycles(edges)


def _upward() -> dict[str, Import]:
    found = {}
    for i in _graph_imports():
        a, b = _unit(i.importer), _unit(i.imported)
        if a is not None and b is not None and b[0] > a[0]:
            found[f"upward: {i.importer} imports {i.imported}"] = i
    return found


def _through_wrong_door() -> dict[str, Import]:
    found = {}
    for i in _graph_imports():
        for importer, (guarded, doors) in NARROW_DOORS.items():
            if (_under(i.importer, importer) and any(_under(i.imported, g) for g in guarded)
                    and not any(_under(i.imported, d) for d in doors)):
                found[f"door: {i.importer} imports {i.imported}"] = i
    return found


def _all_violations() -> set[str]:
    return _module_cycles() | _package_cycles() | set(_upward()) | set(_through_wrong_door())


def _report(what: str, items: list[str]) -> str:
    return f"{what} (tests/unit/test_layering.py):\n  " + "\n  ".join(items)


def _describe(found: dict[str, Import]) -> list[str]:
    return [f"{key} ({PACKAGE_DIR.name}/{_modules()[i.importer].relative_to(PACKAGE_DIR)}:{i.line}, {i.where})"
            for key, i in sorted(found.items())]


def test_the_scan_sees_the_imports_it_must() -> None:
    imports = {(i.importer, i.imported, i.where) for i in _imports()}
    assert ("firelet.kvm.system", "firelet.kvm.vm_fd", "top") in imports
    assert ("firelet.builder.boot", "firelet.builder.device_manager", "function") in imports  # from a function
    assert ("firelet.controller.interface", "firelet.config.model", "TYPE_CHECKING") in imports
    assert ("firelet.kvm.system", "firelet.kvm.ioctls", "top") in imports  # from firelet.kvm import ioctls
    assert len(_modules()) > 50


def test_every_module_has_a_layer() -> None:
    homeless = [m for m in _modules() if m != "firelet" and _unit(m) is None]
    assert not homeless, _report("modules without a layer: add them to LAYERS", homeless)


def test_no_import_cycles_between_modules() -> None:
    new = sorted(_module_cycles() - KNOWN_VIOLATIONS)
    assert not new, _report("modules that import each other (directly or around a loop)", new)


def test_no_import_cycles_between_packages() -> None:
    new = sorted(_package_cycles() - KNOWN_VIOLATIONS)
    assert not new, _report("packages that import each other (directly or around a loop)", new)


def test_no_module_imports_from_a_layer_above() -> None:
    new = {key: i for key, i in _upward().items() if key not in KNOWN_VIOLATIONS}
    assert not new, _report("imports from a layer above (see LAYERS)", _describe(new))


def test_the_api_reaches_the_vmm_only_through_the_controller_interface() -> None:
    new = {key: i for key, i in _through_wrong_door().items() if key not in KNOWN_VIOLATIONS}
    assert not new, _report("the api reaching the VMM past firelet.controller.interface", _describe(new))


def test_known_violations_are_still_there() -> None:
    fixed = sorted(KNOWN_VIOLATIONS - _all_violations())
    assert not fixed, _report("fixed, so delete them from KNOWN_VIOLATIONS", fixed)


def test_the_package_root_loads_nothing_when_imported() -> None:
    """``import firelet`` (done by every submodule's import) must not pull in the runtime."""
    eager = [i for i in _imports() if i.importer == "firelet" and i.where == "top"]
    assert eager == []


def _closure(start: str) -> set[str]:
    seen, todo = set(), [start]
    edges: dict[str, set[str]] = {}
    for i in _graph_imports():  # ``from firelet import __version__`` does not load MicroVM
        edges.setdefault(i.importer, set()).add(i.imported)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(edges.get(module, ()))
    return seen


def test_no_path_of_the_vmm_command_reaches_developer_tooling() -> None:
    """Every module firelet-vmm could ever import, following lazy imports too."""
    reachable = _closure("firelet.cli.vmm")
    assert "firelet.builder.boot" in reachable  # the scan follows the lazy imports to the VMM itself
    assert sorted(m for m in reachable if any(_under(m, bad) for bad in NOT_FOR_THE_VMM)) == []


def test_importing_the_vmm_command_loads_no_developer_tooling() -> None:
    code = "import sys, firelet.cli.vmm; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE_DIR.parent).stdout.split()
    assert "firelet.cli.vmm" in out
    assert [m for m in out if any(_under(m, bad) for bad in NOT_FOR_THE_VMM)] == []
