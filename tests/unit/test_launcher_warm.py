"""The launcher's warm-up imports everything firelet-vmm could import, and nothing that would make a fork unsafe."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from test_layering import NOT_FOR_THE_VMM, _closure, _under

REPO = Path(__file__).resolve().parents[2]

_PROBE = """
import json, os, sys, threading
before = sorted(os.listdir('/proc/self/fd'))
from firelet.launcher.warm import warm_up
warm_up()
after = sorted(os.listdir('/proc/self/fd'))
links = [os.readlink(f'/proc/self/fd/{fd}') for fd in after if fd not in before and os.path.exists(f'/proc/self/fd/{fd}')]
import gc
print(json.dumps({"modules": sorted(sys.modules), "threads": threading.active_count(), "new_fds": links,
                  "frozen": gc.get_freeze_count()}))
"""


def test_warm_up_loads_every_module_firelet_vmm_can_reach_and_stays_single_threaded() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, cwd=REPO)
    report = json.loads(out.stdout)
    loaded = set(report["modules"])
    reachable = {m for m in _closure("firelet.cli.vmm") if m.startswith("firelet.")}
    assert "firelet.vstate.vmm" in reachable  # the scan follows lazy imports to the running VM
    assert sorted(reachable - loaded) == []  # a new lazy import of the VMM: add its package to warm.VMM_PACKAGES
    assert [m for m in loaded if any(_under(m, bad) for bad in NOT_FOR_THE_VMM if bad != "firelet.launcher")] == []
    assert report["threads"] == 1
    assert [link for link in report["new_fds"] if "kvm" in link] == []  # no KVM fd to share with the children
    assert report["frozen"] > 10_000  # the heap made by the imports is frozen
