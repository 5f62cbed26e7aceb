"""What /proc says about a child VMM: CPU time, age and memory (proc(5)).

Read on request only (``list``): nothing here runs in the launcher's idle loop.
A process that ended between the question and the read gives zeros, not an error.
"""

from __future__ import annotations

import os

_CLK_TCK = os.sysconf("SC_CLK_TCK")
# proc(5) /proc/PID/stat, 1-based: 14 utime, 15 stime, 22 starttime (clock ticks since boot).
# Counted after the ")" that ends field 2 (comm, which may hold spaces), field 3 is index 0.
_UTIME, _STIME, _STARTTIME = 14 - 3, 15 - 3, 22 - 3


def stat_times(pid: int) -> tuple[float, float]:
    """(CPU seconds used, seconds since the process started), or (0, 0) if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        with open("/proc/uptime", "rb") as f:
            uptime_s = float(f.read().split()[0])
    except (OSError, IndexError, ValueError):
        return 0.0, 0.0
    cpu_s = (int(fields[_UTIME]) + int(fields[_STIME])) / _CLK_TCK
    return cpu_s, max(0.0, uptime_s - int(fields[_STARTTIME]) / _CLK_TCK)


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, USS) in KiB from /proc/PID/smaps_rollup; USS is Private_Clean + Private_Dirty.

    USS is what the process alone costs: the pages it shares copy-on-write with
    the launcher (and its siblings) are not in it.
    """
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            text = f.read()
    except OSError:
        return 0, 0
    values: dict[bytes, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(b":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key] = int(parts[0])
    return values.get(b"Rss", 0), values.get(b"Private_Clean", 0) + values.get(b"Private_Dirty", 0)


def fd_count(pid: int | str = "self") -> int:
    """How many fds the process has open (the soak test's leak check)."""
    return len(os.listdir(f"/proc/{pid}/fd"))
