"""The launcher as the OOM killer's last choice among its VMMs (proc(5), /proc/PID/oom_score_adj).

Guest RAM is lazy, so a host may hold more microVMs than it can back once their guests
use it (oversubscription, as with Firecracker); the kernel's OOM killer then ends the
process with the highest score. A VMM holding its guest's pages normally scores far
above the launcher; lowering the launcher's adjustment makes that sure, so an OOM ends
a VMM, reported in its record as killed, and never the launcher that holds the others.
Lowering needs CAP_SYS_RESOURCE; each child raises its own back, which needs nothing.
"""

from __future__ import annotations

#: The launcher's adjustment (-1000 would exempt it entirely; it stays killable as a last resort).
LAUNCHER_OOM_SCORE_ADJ = -500

_PATH = "/proc/self/oom_score_adj"


def protect_launcher(path: str = _PATH) -> int | None:
    """Lower this process's adjustment; the original value for children, or None if not allowed."""
    try:
        with open(path) as f:
            original = int(f.read())
        restore(min(original, LAUNCHER_OOM_SCORE_ADJ), path)
    except (OSError, ValueError):  # no CAP_SYS_RESOURCE (a container's root, say): the kernel's choice stands
        return None
    return original


def restore(value: int, path: str = _PATH) -> None:
    """Set this process's adjustment (a forked VMM going back to the launcher's original)."""
    with open(path, "w") as f:
        f.write(str(value))
