"""Keep a VMM process's start lean: what firelet's commands do first when they are the process.

Only the console scripts (and ``python -m firelet``) call this, never library code: it
changes ``sys.modules`` for the whole process.
"""

import sys

#: Sub-commands whose process is a VMM: their start is the microVM's boot time.
VMM_COMMANDS = ("run",)


def hide_typing_extensions() -> None:
    """Make ``import typing_extensions`` fail in this process, unless something already imported it.

    msgspec imports typing_extensions whenever it is installed (test tools and many
    libraries bring it) only to recognise that package's own typing forms; firelet's
    models use ``typing`` alone, so msgspec decodes them the same without it. In the nested
    rig its import (with ``inspect``, ``ast``, ``dis``...) was ~0.1 s of the VMM's start.
    """
    sys.modules.setdefault("typing_extensions", None)  # type: ignore[arg-type]
