"""The contract between a VMM user and firelet's guest image (``guest/rootfs/init``).

The guest's init prints :data:`READY_MARKER` once userspace is up and
:data:`EXIT_MARKER` after running the command passed with
:func:`guest_cmdline_for`. ``MicroVM``, the tests, the demo and the benchmarks
read the console through :func:`parse_ready_uptime` and :func:`parse_exit_status`,
so these names and formats are stable. The images that carry the init are built by
:mod:`firelet.devtools.images`.
"""

from __future__ import annotations

import base64
import re

from firelet.errors import UsageError

READY_MARKER = "FIRELET-READY"
EXIT_MARKER = "FIRELET-EXIT"
CMD_PARAM = "firelet.cmd"

# x86 COMMAND_LINE_SIZE is 2048 bytes (boot protocol `cmdline_size`); leave
# room for console=, root= and the virtio_mmio.device= entries.
MAX_CMD_FRAGMENT = 1536

_READY = re.compile(re.escape(READY_MARKER) + r" uptime=([0-9]+(?:\.[0-9]+)?)\s*$", re.MULTILINE)
_EXIT = re.compile(re.escape(EXIT_MARKER) + r" status=([0-9]{1,3})\s*$", re.MULTILINE)

def guest_cmdline_for(command: str) -> str:
    """The ``firelet.cmd=<base64>`` kernel parameter that makes the guest run ``command``.

    Base64 keeps spaces, quotes and newlines out of the kernel's parameter
    parser; the guest's init decodes it and runs it with ``sh -c``.
    """
    if not command.strip():
        raise UsageError("the guest command is empty: give a shell command to run")
    fragment = f"{CMD_PARAM}={base64.b64encode(command.encode()).decode('ascii')}"
    if len(fragment) > MAX_CMD_FRAGMENT:
        raise UsageError(
            f"the guest command is too long for the kernel command line ({len(fragment)} > "
            f"{MAX_CMD_FRAGMENT} bytes encoded): put it in a script on the root filesystem"
        )
    return fragment


def parse_ready_uptime(console_text: str) -> float | None:
    """The guest uptime (s) on the first readiness line, or None if it is not there yet."""
    match = _READY.search(_normalise(console_text))
    return float(match.group(1)) if match else None


def parse_exit_status(console_text: str) -> int | None:
    """The exit status the guest command reported, or None if it has not finished.

    The last marker counts: the command itself may print marker-like text,
    but init's own line comes after everything the command printed.
    """
    matches = _EXIT.findall(_normalise(console_text))
    return int(matches[-1]) if matches else None


def _normalise(text: str) -> str:
    # A serial console ends lines with CR LF.
    return text.replace("\r", "")
