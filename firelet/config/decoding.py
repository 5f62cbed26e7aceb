"""Decoding JSON into validated structs, with failures as one line that names the field.

msgspec reports ``Expected `int` >= 1 - at `$.machine-config.vcpu_count```;
people get ``machine-config.vcpu_count: expected int >= 1, got 0``. Used for the
config file and every API body (:mod:`firelet.config.model`, :mod:`firelet.api`).
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

from firelet.errors import UsageError

T = TypeVar("T")


class ConfigError(UsageError):
    """A configuration file or API body that does not describe a valid microVM."""


# Patterns, not compiled objects: they serve error messages only, so the VMM's start does
# not pay for compiling them (re compiles and caches each on first use).
_AT = r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$"
_FIELD_MSG = r"^(?P<field>[A-Za-z_][\w.-]*): (?P<rest>.*)$"
_PATH_PART = r"\.([^.\[]+)|\[(\d+)\]"


def _lookup(raw: Any, path: str) -> tuple[bool, Any]:
    """The value at a msgspec error path (``.a.b[0].c``) inside the raw document."""
    node = raw
    for key, index in re.findall(_PATH_PART, path):
        try:
            node = node[int(index)] if index else node[key]
        except (KeyError, IndexError, TypeError):
            return False, None
    return True, node


def _describe(value: Any) -> str:
    text = msgspec.json.encode(value).decode()
    return text if len(text) <= 40 else text[:37] + "..."


def format_validation_error(exc: msgspec.ValidationError | ValueError, data: bytes | None = None) -> str:
    """msgspec's ``Expected `int` >= 1 - at `$.machine-config.vcpu_count```, said as
    ``machine-config.vcpu_count: expected int >= 1, got 0``."""
    match = re.match(_AT, str(exc), re.S)
    assert match is not None  # the pattern matches any string
    msg, path = match.group("msg"), match.group("path") or ""
    field_msg = re.match(_FIELD_MSG, msg, re.S)
    if field_msg:  # a __post_init__ message that already names its field
        path = f"{path}.{field_msg.group('field')}"
        msg = field_msg.group("rest")
    unknown = re.match(r"Object contains unknown field `(.*)`$", msg, re.S)
    missing = re.match(r"Object missing required field `(.*)`$", msg, re.S)
    if unknown:
        msg = f"unknown field {unknown.group(1)!r}"
    elif missing:
        path, msg = f"{path}.{missing.group(1)}", "required field missing"
    else:
        msg = msg.replace("`", "")
        msg = msg[:1].lower() + msg[1:]
        if data is not None and msg.startswith("expected") and ", got" not in msg:
            try:
                found, value = _lookup(msgspec.json.decode(data), path)
            except msgspec.DecodeError:
                found = False
            if found:
                msg = f"{msg}, got {_describe(value)}"
    where = path.lstrip(".")
    line = f"{where}: {msg}" if where else msg
    return line.replace("\r", "\\r").replace("\n", "\\n")  # one line, whatever the input held


def decode_json(data: bytes, type_: type[T]) -> T:
    """Decode and validate one JSON document as ``type_``, raising :class:`ConfigError` with a one-line message."""
    try:
        return msgspec.json.decode(data, type=type_)
    except msgspec.ValidationError as exc:
        raise ConfigError(format_validation_error(exc, data)) from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"invalid JSON: {str(exc)[:1].lower()}{str(exc)[1:]}") from None


def convert(obj: Any, type_: type[T]) -> T:
    """Validate already-decoded builtins (e.g. a merged PATCH) as ``type_``."""
    try:
        return msgspec.convert(obj, type=type_)
    except (msgspec.ValidationError, ValueError) as exc:
        raise ConfigError(format_validation_error(exc, msgspec.json.encode(obj))) from None


def to_builtins(obj: Any) -> Any:
    return msgspec.to_builtins(obj)
