"""Runs firelet-vmm under scripts/seccomp-trace: marks where each thread starts and confines.

    python scripts/seccomp_trace_hook.py [--confine] -- VMM-ARGS...

A mark is a stat(2) of a path under MARK that strace records with the thread's id. Each thread
is marked at its start (with its name) and where it confines itself: every call of
``firelet.seccomp.confine`` (the VMM's own confinement points, docs/seccomp.md) is marked
first. Without ``--confine`` the VMM runs its confinement code path whole (the imports before
confinement, glibc's preparation, the vCPUs held until every thread reached its point) but
installs no filter, so the trace sees what each thread calls after its point; with
``--confine`` the filters are installed as in production.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from typing import Any

MARK = "/firelet-seccomp-mark/"
#: Thread names (firelet.threads; older names too, for saved traces) -> kind; "build" threads end
#: before the guest runs.
NAME_KINDS = [(r"fc_api$", "api"), (r"(fl-events|fc_vmm)$", "vmm"), (r"(fl-vcpu|fc_vcpu ?)\d+$", "vcpu"),
              (r"fc_metrics$", "metrics"), (r"(fl-watch|fc_watch)$", "watch"), (r"main$", "main"),
              (r"(firelet-(kvm-setup|loader)|fc_(kvm_setup|loader))$", "build")]
#: Kinds that confine themselves first thing in their thread (their calls count from its start).
CONFINED_AT_START = {"api", "vcpu", "metrics", "watch"}


def kind_of(name: str) -> str:
    for pattern, kind in NAME_KINDS:
        if re.match(pattern, name):
            return kind
    return f"unknown:{name}"


def main(confine: bool, args: list[str]) -> int:
    import firelet.seccomp
    from firelet.seccomp import attach

    def mark(what: str) -> None:
        try:
            os.stat(MARK + what)
        except OSError:
            pass

    if not confine:  # the whole confinement path runs; only the kernel call is left out
        def no_install(program: Any) -> None:
            pass

        attach_module: Any = attach
        attach_module.install_program = no_install
    confine_for_real = firelet.seccomp.confine

    def confine_marked(kind: str) -> bool:
        mark("confine/" + kind)
        return confine_for_real(kind)

    seccomp_module: Any = firelet.seccomp
    seccomp_module.confine = confine_marked
    thread_class: Any = threading.Thread  # _bootstrap_inner: CPython's private start of a thread
    inner = thread_class._bootstrap_inner

    def bootstrap_inner(self: threading.Thread) -> None:
        mark("thread/" + self.name)
        inner(self)

    thread_class._bootstrap_inner = bootstrap_inner
    mark("thread/main")

    import firelet.cli.vmm as vmm

    sys.argv = ["firelet-vmm", *args]
    return int(vmm.console())


if __name__ == "__main__":
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    sys.exit(main("--confine" in argv[:split], argv[split + 1:]))
