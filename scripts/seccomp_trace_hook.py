"""Runs firelet-vmm under scripts/seccomp-trace: marks where each thread starts and confines.

    python scripts/seccomp_trace_hook.py [--confine] -- VMM-ARGS...

A mark is a stat(2) of a path under MARK that strace records with the thread's id. Each thread
is marked at its start (with its name) and at the point where it will install its filter:
vCPU, API, metrics and watch threads at their start, the event loop once ``InstanceStart``
has built the VM, the main thread when it starts waiting for the VM. The backend (with the
event loop thread) is made on an unconfined helper thread, as docs/seccomp.md asks of the
wiring (made by the API thread it would run under the API's filter). With ``--confine`` each
thread also installs firelet's filter for its kind at its mark, as the VMM will once wired,
after the late imports the traces found (simulating their fix).
"""

from __future__ import annotations

import os
import queue
import re
import sys
import threading
from collections.abc import Callable
from typing import Any

MARK = "/firelet-seccomp-mark/"
#: Thread names (today's and the announced fc_* ones) -> kind; "build" threads end before the guest runs.
NAME_KINDS = [(r"fc_api$", "api"), (r"(fl-events|fc_vmm)$", "vmm"), (r"(fl-vcpu|fc_vcpu ?)\d+$", "vcpu"),
              (r"fc_metrics$", "metrics"), (r"fl-watch$", "watch"), (r"main$", "main"),
              (r"firelet-(kvm-setup|loader)$", "build"), (r"seccomp-trace-spawner$", "build")]
#: Kinds confined from their thread's start; the others at their confine/<kind> mark.
CONFINED_AT_START = {"api", "vcpu", "metrics", "watch"}


def kind_of(name: str) -> str:
    for pattern, kind in NAME_KINDS:
        if re.match(pattern, name):
            return kind
    return f"unknown:{name}"


def main(confine: bool, args: list[str]) -> int:
    if confine:  # the late imports, done before any thread confines itself
        import json  # noqa: F401 - imported for its side effect (sys.modules)

        import firelet.devices.legacy.console
        import firelet.logs
        import firelet.seccomp.attach
        import firelet.seccomp.compiler
    import firelet.seccomp

    if confine:
        firelet.seccomp.resolve_policy(False, None)

    def mark(what: str, kind: str | None = None) -> None:
        try:
            os.stat(MARK + what)
        except OSError:
            pass
        if confine and kind is not None:
            firelet.seccomp.install(kind)

    thread_class: Any = threading.Thread  # _bootstrap_inner: CPython's private start of a thread
    inner = thread_class._bootstrap_inner

    def bootstrap_inner(self: threading.Thread) -> None:
        kind = kind_of(self.name)
        mark("thread/" + self.name, kind if kind in CONFINED_AT_START else None)
        inner(self)

    thread_class._bootstrap_inner = bootstrap_inner
    mark("thread/main")

    import firelet.cli.vmm as vmm
    from firelet.api import routes
    from firelet.controller import vmm_controller

    wait = vmm._wait_for_vm

    def wait_for_vm(api: Any) -> int:
        mark("confine/main", "main")
        return wait(api)

    cli: Any = vmm
    cli._wait_for_vm = wait_for_vm
    start = vmm_controller.VmmController.start

    def start_and_confine(self: Any, config: Any) -> None:
        start(self, config)
        mark("confine/vmm", "vmm")

    controller: Any = vmm_controller.VmmController
    controller.start = start_and_confine
    api_class: Any = routes.Api
    api_class.create_backend = _on_spawner(routes.Api.create_backend)
    sys.argv = ["firelet-vmm", *args]
    return int(vmm.console())


def _on_spawner(create: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``create`` run on a helper thread started now, before anything is confined."""
    jobs: queue.Queue[tuple[Callable[[], Any], queue.Queue[Any]]] = queue.Queue()

    def spawner() -> None:
        while True:
            fn, answer = jobs.get()
            try:
                answer.put(fn())
            except BaseException as exc:  # handed to the caller
                answer.put(exc)

    threading.Thread(target=spawner, name="seccomp-trace-spawner", daemon=True).start()

    def on_spawner(self: Any) -> Any:
        answer: queue.Queue[Any] = queue.Queue()
        jobs.put((lambda: create(self), answer))
        result = answer.get()
        if isinstance(result, BaseException):
            raise result
        return result

    return on_spawner


if __name__ == "__main__":
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    sys.exit(main("--confine" in argv[:split], argv[split + 1:]))
