"""Thread names: Firecracker's where it has the thread, ``fc_<kind>`` for firelet's own, defined once."""

from __future__ import annotations

import ast
import threading
from pathlib import Path

from firelet import threads
from firelet.vstate.exits import VmExit
from firelet.vstate.vcpu import Vcpu, VcpuGate

RUNTIME = Path(threads.__file__).parent


def test_firecrackers_names_and_every_kind_fits_a_linux_thread_name() -> None:
    assert (threads.VMM, threads.API, threads.vcpu(3)) == ("fc_vmm", "fc_api", "fc_vcpu 3")
    for kind in threads.KINDS:
        assert kind.startswith("fc_") and threads.kind_of(kind) == kind
    assert len(threads.vcpu(31).encode()) <= 15  # prctl(PR_SET_NAME) keeps 15 bytes
    assert all(len(kind.encode()) <= 15 for kind in threads.KINDS)
    assert threads.kind_of("fc_vcpu 12") == threads.VCPU
    assert threads.kind_of("MainThread") is None and threads.kind_of("fl-vcpu0") is None


def _thread_names(tree: ast.AST) -> list[ast.expr | None]:
    """The ``name=`` of every ``threading.Thread(...)`` in a module (None: no name given)."""
    names: list[ast.expr | None] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "Thread":
            names.append(next((k.value for k in node.keywords if k.arg == "name"), None))
    return names


def test_every_runtime_thread_takes_its_name_from_the_one_list_of_kinds() -> None:
    checked = 0
    for path in sorted(RUNTIME.rglob("*.py")):
        if {"devtools", "hostnet", "jailer"} & set(path.parts):  # tooling and host setup, not the VMM
            continue
        for name in _thread_names(ast.parse(path.read_text())):
            where = f"{path.relative_to(RUNTIME.parent)}"
            assert name is not None, f"{where}: a thread without a name"
            if isinstance(name, ast.Constant):  # a literal must still be a known kind
                assert threads.kind_of(name.value), f"{where}: thread name {name.value!r} is not a known kind"
            else:
                text = ast.unparse(name)
                assert text.startswith("threads.") or text == "name", f"{where}: thread name {text}"
            checked += 1
    assert checked >= 6


class _OneExitFd:
    """Just enough of a vCPU fd for one turn of the run loop: KVM_RUN fails at once."""

    run_struct = None
    run_view = memoryview(bytearray(64))

    def __init__(self) -> None:
        self.ran_on: str | None = None

    def run(self) -> bool:
        self.ran_on = threading.current_thread().name
        raise OSError(5, "Input/output error")


def test_vcpu_threads_are_named_like_firecrackers() -> None:
    fd = _OneExitFd()
    ended: list[VmExit] = []
    vcpu = Vcpu(2, fd, io_bus=None, mmio_bus=None, gate=VcpuGate(), on_exit=ended.append)  # type: ignore[arg-type] - buses unused
    vcpu.start()
    assert vcpu.thread is not None
    vcpu.thread.join(5)
    assert fd.ran_on == "fc_vcpu 2" and len(ended) == 1
