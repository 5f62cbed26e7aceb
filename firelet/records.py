"""Versioned state records: frozen dataclasses to and from plain dicts.

A device's ``save_state()`` returns a record: a frozen dataclass of ints,
bools, strs, bytes, ``X | None``, tuples and nested records, with a class
attribute ``VERSION``. :func:`to_dict` turns it into plain dicts and lists that
msgpack carries as they are and JSON carries once bytes are base64 (as
``msgspec.json`` encodes them); :func:`from_dict` checks a dict field by field
against the record's types and version and builds the record again. A saved
state comes from a file and is not trusted: a wrong type, a missing or unknown
field or a version this firelet does not know is a :class:`RecordError`.

A record that changes shape gets ``VERSION`` bumped and, to keep reading the old
shape, a classmethod ``upgrade(version, fields) -> fields`` that turns an older
version's fields into the current ones.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, TypeVar

from firelet.errors import FireletError

#: The key that carries each record's version in its dict.
VERSION_KEY = "version"


class RecordError(FireletError):
    """A saved state that this firelet cannot read back."""


class Record(Protocol):
    """What every state record is: a (frozen) dataclass with a version."""

    VERSION: ClassVar[int]
    __dataclass_fields__: ClassVar[dict[str, Any]]


R = TypeVar("R", bound=Record)


def to_dict(record: Record) -> dict[str, Any]:
    """The record as plain data: dicts for records (with their version), lists for tuples."""
    out: dict[str, Any] = {VERSION_KEY: type(record).VERSION}
    for field in dataclasses.fields(record):
        out[field.name] = _plain(getattr(record, field.name))
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(typing.cast(Record, value))  # a nested record
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


def from_dict(cls: type[R], data: Any) -> R:
    """Rebuild a ``cls`` record from :func:`to_dict`'s output (or its JSON/msgpack round trip)."""
    return _record(cls, data, cls.__name__)


def _record(cls: type[R], data: Any, where: str) -> R:
    if not isinstance(data, Mapping):
        raise RecordError(f"saved state {where} is a {type(data).__name__}, not a record")
    fields = dict(data)
    version = fields.pop(VERSION_KEY, None)
    if type(version) is not int:
        raise RecordError(f"saved state {where} has no version number; it was not saved by firelet")
    if version > cls.VERSION:
        raise RecordError(
            f"saved state {where} is version {version}, newer than the version {cls.VERSION} this firelet "
            "reads; restore it with the firelet that saved it"
        )
    if version < cls.VERSION:
        upgrade = getattr(cls, "upgrade", None)
        if upgrade is None or version < 1:
            raise RecordError(f"saved state {where} is version {version}, which this firelet no longer reads")
        fields = upgrade(version, fields)
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise RecordError(f"saved state {where} has unknown fields {', '.join(unknown)}")
    values = {}
    for name, field in known.items():
        if name in fields:
            values[name] = _convert(hints[name], fields[name], f"{where}.{name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise RecordError(f"saved state {where} lacks the field {name}")
    return cls(**values)


def _convert(tp: Any, value: Any, where: str) -> Any:
    """``value`` checked (and converted: lists to tuples, base64 to bytes) against the type ``tp``."""
    origin = typing.get_origin(tp)
    if origin is types.UnionType or origin is typing.Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (other,) = [a for a in args if a is not type(None)]  # records use only "X | None"
        return _convert(other, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise RecordError(f"saved state {where} should be a list, not {type(value).__name__}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], item, f"{where}[{i}]") for i, item in enumerate(value))
        if len(args) != len(value):
            raise RecordError(f"saved state {where} should have {len(args)} items, not {len(value)}")
        return tuple(_convert(t, item, f"{where}[{i}]") for i, (t, item) in enumerate(zip(args, value, strict=False)))
    if dataclasses.is_dataclass(tp):
        return _record(typing.cast("type[Record]", tp), value, where)
    if tp is bytes:
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        if isinstance(value, str):  # bytes that went through JSON
            try:
                return base64.b64decode(value, validate=True)
            except binascii.Error:
                raise RecordError(f"saved state {where} is neither bytes nor base64") from None
    elif tp in (bool, int, str) and type(value) is tp:  # exact: True is not an int here
        return value
    raise RecordError(f"saved state {where} should be {getattr(tp, '__name__', tp)}, not {type(value).__name__}")
