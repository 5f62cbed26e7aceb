"""Import once what every VMM would import, so that forked children share it.

A cold ``firelet-vmm`` pays for its interpreter and its imports on each start;
a child forked from the warm launcher finds them loaded, and their pages stay
shared copy-on-write as long as nobody writes them. :func:`warm_up` imports the
VMM's whole runtime (the modules ``firelet-vmm`` loads on its way to an API and
a running VM, lazily imported ones included) and reads its default seccomp
policy, then freezes the heap: the cyclic collector never visits (and so never
writes to) what start-up made. A jailed child (docs/launcher.md) relies on this:
after ``pivot_root`` nothing of the host's Python or firelet is there to read.
"""

from __future__ import annotations

import gc
import importlib
import pkgutil
import threading

#: The runtime's packages: every module in them is imported (each is code a VMM may run).
VMM_PACKAGES = ("firelet.kvm", "firelet.memory", "firelet.arch", "firelet.events", "firelet.devices",
                "firelet.vstate", "firelet.config", "firelet.mmds", "firelet.builder", "firelet.controller",
                "firelet.api", "firelet.seccomp", "firelet.snapshot")
#: Single modules the VMM command loads besides those packages.
VMM_MODULES = ("firelet.errors", "firelet.log", "firelet.logs", "firelet.metrics", "firelet.records",
               "firelet.threads", "firelet.cli.lean", "firelet.cli.vmm")


def warm_up() -> list[str]:
    """Import the VMM's runtime, build its argument parser once, freeze the heap; the modules loaded."""
    from firelet.cli.lean import hide_typing_extensions

    hide_typing_extensions()  # as firelet-vmm does: msgspec then skips it in every child too
    loaded: list[str] = []
    for name in VMM_MODULES:
        importlib.import_module(name)
        loaded.append(name)
    for name in VMM_PACKAGES:
        package = importlib.import_module(name)
        loaded.append(name)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{name}."):
            importlib.import_module(info.name)
            loaded.append(info.name)
    from firelet import seccomp
    from firelet.cli.vmm import LATE_IMPORTS, build_parser

    for name in LATE_IMPORTS:  # what firelet-vmm imports after its start (the standard library's included)
        importlib.import_module(name)
        loaded.append(name)
    build_parser()  # argparse and the modules its help text needs
    seccomp.default_policy()  # read once here: a jailed child cannot reach policy.json (docs/launcher.md)
    if threading.active_count() != 1:  # fork safety rests on this (docs/launcher.md)
        raise RuntimeError("importing the VMM started a thread; the launcher must stay single-threaded")
    gc.collect()
    gc.freeze()
    return loaded
