"""Reading kernel config fragments and checking that Kconfig kept them.

``make olddefconfig`` silently drops any option whose dependencies are not
met, so a fragment can ask for ``CONFIG_VIRTIO_BLK=y`` and get a kernel
without it. Comparing the fragment with the resulting ``.config`` turns that
into an error naming the options.
"""

from __future__ import annotations

import re

# `CONFIG_FOO=value` and `# CONFIG_FOO is not set` (scripts/kconfig/confdata.c).
_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")

UNSET = "n"


def parse_config(text: str) -> dict[str, str]:
    """Option name -> value (``n`` for "is not set") for a .config or fragment."""
    options: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if match := _SET.match(line):
            options[match.group(1)] = match.group(2)
        elif match := _UNSET.match(line):
            options[match.group(1)] = UNSET
    return options


def dropped_options(fragment: str, config: str) -> list[str]:
    """Fragment lines the final .config does not honour, as ``NAME=wanted (got X)``.

    An option the fragment turns off counts as honoured when the .config
    turns it off or does not mention it (Kconfig omits options whose
    dependencies are off).
    """
    want = parse_config(fragment)
    have = parse_config(config)
    problems: list[str] = []
    for name, value in want.items():
        got = have.get(name, UNSET)
        if value == UNSET:
            if got not in (UNSET, ""):
                problems.append(f"{name}=n (got {got})")
        elif got != value:
            problems.append(f"{name}={value} (got {'unset' if got == UNSET else got})")
    return problems
