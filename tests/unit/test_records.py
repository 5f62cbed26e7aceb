"""State records to and from plain dicts: every record type round-trips; bad or newer input is refused."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, ClassVar

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firelet.devices.legacy.i8042 import I8042State
from firelet.devices.legacy.serial import SerialState
from firelet.devices.pseudo.boot_timer import BootTimerState
from firelet.devices.virtio.block.device import BlockState
from firelet.devices.virtio.mmio import MmioTransportState
from firelet.devices.virtio.queue import QueueState
from firelet.records import RecordError, from_dict, to_dict

RECORDS = [QueueState, MmioTransportState, BlockState, SerialState, I8042State, BootTimerState]


@pytest.mark.parametrize("cls", RECORDS)
def test_every_record_is_frozen_and_versioned(cls: type) -> None:
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
    assert cls.VERSION == 1
    assert "VERSION" not in {f.name for f in dataclasses.fields(cls)}


def _values(tp: Any) -> st.SearchStrategy[Any]:
    """Any value of a record field's type (ints as the u64 registers and indexes they are)."""
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return st.builds(tp, **{f.name: _values(hints[f.name]) for f in dataclasses.fields(tp)})
    args = typing.get_args(tp)
    if typing.get_origin(tp) is types.UnionType:
        return st.one_of([_values(a) for a in args])
    if typing.get_origin(tp) is tuple:
        if args[1:] == (Ellipsis,):
            return st.lists(_values(args[0]), max_size=4).map(tuple)
        return st.tuples(*(_values(a) for a in args))
    simple = {int: st.integers(0, 2**64 - 1), bool: st.booleans(), bytes: st.binary(max_size=32),
              str: st.text(max_size=16), type(None): st.none()}
    return simple[tp]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(RECORDS).flatmap(_values))
def test_any_record_round_trips_through_a_dict_json_and_msgpack(record: Any) -> None:
    cls = type(record)
    plain = to_dict(record)
    assert plain["version"] == 1
    assert from_dict(cls, plain) == record
    assert from_dict(cls, msgspec.json.decode(msgspec.json.encode(plain))) == record  # bytes as base64
    assert from_dict(cls, msgspec.msgpack.decode(msgspec.msgpack.encode(plain))) == record


def _queue(**changes: Any) -> QueueState:
    state = QueueState(max_size=256, size=64, ready=True, desc_table=0x1000, avail_ring=0x2000, used_ring=0x3000,
                       event_idx=True, indirect=False, next_avail=7, next_used=5, signalled_used=None, broken=False)
    return dataclasses.replace(state, **changes)


def test_a_newer_record_is_refused_in_one_line() -> None:
    plain = to_dict(_queue())
    plain["version"] = 2
    with pytest.raises(RecordError, match=r"^saved state QueueState is version 2, newer than the version 1") as exc:
        from_dict(QueueState, plain)
    assert "\n" not in str(exc.value)


def test_a_newer_nested_record_is_refused_with_where_it_is() -> None:
    transport = MmioTransportState(2, 15, 0, 1, 1 << 32, 0, 1, 3, True, (_queue(), _queue(next_avail=1)))
    plain = to_dict(transport)
    plain["queues"][1]["version"] = 9
    with pytest.raises(RecordError, match=r"MmioTransportState\.queues\[1\] is version 9"):
        from_dict(MmioTransportState, plain)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("version"), "has no version number"),
        (lambda d: d.update(version="1"), "has no version number"),
        (lambda d: d.update(version=0), "version 0, which this firelet no longer reads"),
        (lambda d: d.update(extra=1), "unknown fields extra"),
        (lambda d: d.pop("size"), "lacks the field size"),
        (lambda d: d.update(size="64"), r"QueueState\.size should be int, not str"),
        (lambda d: d.update(size=True), r"QueueState\.size should be int, not bool"),
        (lambda d: d.update(ready=1), r"QueueState\.ready should be bool, not int"),
        (lambda d: d.update(signalled_used=1.5), r"signalled_used should be int, not float"),
    ],
)
def test_a_record_with_wrong_fields_is_refused(change: Any, message: str) -> None:
    plain = to_dict(_queue())
    change(plain)
    with pytest.raises(RecordError, match=message):
        from_dict(QueueState, plain)


def test_bytes_and_tuples_are_checked() -> None:
    serial = to_dict(SerialState(0, 3, 8, 0, 0, 12, 0, False, b"ab"))
    assert from_dict(SerialState, serial | {"rx": "YWI="}).rx == b"ab"
    with pytest.raises(RecordError, match="neither bytes nor base64"):
        from_dict(SerialState, serial | {"rx": "not base64!"})
    i8042 = to_dict(I8042State(((0xFA, False),), 0, 0x45, 3, False, None, None, 2))
    with pytest.raises(RecordError, match=r"I8042State\.queue\[0\] should have 2 items, not 3"):
        from_dict(I8042State, i8042 | {"queue": [[0xFA, False, 1]]})
    with pytest.raises(RecordError, match=r"I8042State\.queue should be a list, not str"):
        from_dict(I8042State, i8042 | {"queue": "FA"})
    with pytest.raises(RecordError, match="is a list, not a record"):
        from_dict(I8042State, [])


@dataclasses.dataclass(frozen=True)
class _Renamed:
    """A record at version 2 whose field ``count`` was ``n`` in version 1."""

    VERSION: ClassVar[int] = 2
    count: int

    @classmethod
    def upgrade(cls, version: int, fields: dict[str, Any]) -> dict[str, Any]:
        assert version == 1
        return {"count": fields.pop("n")} | fields


def test_an_older_record_is_read_through_its_upgrade() -> None:
    assert from_dict(_Renamed, {"version": 1, "n": 3}) == _Renamed(3)
    assert from_dict(_Renamed, {"version": 2, "count": 4}) == _Renamed(4)
