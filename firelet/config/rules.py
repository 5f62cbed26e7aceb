"""The configuration's value rules beyond a field's type: ids, MACs, log levels, duplicates.

Kept apart from :mod:`firelet.config.model` (the shapes); the model's ``__post_init__``
hooks call these, and their ``ValueError`` messages name the field.
"""

from __future__ import annotations

import re

LOG_LEVELS = ("Error", "Warning", "Info", "Debug", "Trace", "Off")
_MAC = r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}"  # compiled on first use: most VMs have no NIC


def check_id(field: str, value: str) -> None:
    """Refuse an id that cannot be a path segment of the API (Firecracker's ids: printable, no slash, bounded)."""
    if not value or len(value) > 64 or not all(c.isalnum() or c in "_-." for c in value):
        raise ValueError(f"{field}: expected 1-64 characters of letters, digits, '_', '-' or '.', got {value!r}")


def first_duplicate(values: list[str]) -> str | None:
    """The first value that appears a second time in ``values``, or None."""
    seen: set[str] = set()
    for value in values:
        if value in seen:
            return value
        seen.add(value)
    return None


def check_mac(text: str) -> str:
    """A guest MAC in lower case, or ValueError naming ``guest_mac``.

    The guest's own address must be one a NIC may have: unicast (the I/G bit, bit 0 of the
    first octet, clear; IEEE 802-2014 §8.2) and not all zeros, which Linux refuses as an
    interface address (``is_valid_ether_addr``). Firecracker reports the MAC in lower case.
    """
    if not re.fullmatch(_MAC, text):
        raise ValueError(f"guest_mac: expected a MAC like 06:00:ac:10:00:02, got {text!r}")
    first = int(text[:2], 16)
    if first & 1:
        raise ValueError(f"guest_mac: expected a unicast MAC (first octet even), got multicast {text}")
    if text.replace(":", "").strip("0") == "":
        raise ValueError(f"guest_mac: expected a unicast MAC, got the all-zero address {text}")
    return text.lower()


def normalize_log_level(level: str) -> str:
    """Firecracker's levels, case-insensitive (firecracker.yaml, Logger.level); ``Warn`` is an alias."""
    wanted = "warning" if level.lower() == "warn" else level.lower()
    for known in LOG_LEVELS:
        if known.lower() == wanted:
            return known
    raise ValueError(f"level: expected one of {', '.join(LOG_LEVELS)}, got {level!r}")
