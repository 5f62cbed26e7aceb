"""The MMDS data store on its own: Firecracker's PUT/PATCH/GET rules, the size limit, guest lookups."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firelet.mmds.store import (
    LIMIT_EXCEEDED,
    NOT_INITIALIZED,
    MmdsError,
    MmdsLimitExceeded,
    MmdsNotFound,
    MmdsStore,
    merge_patch,
)

_scalars = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=8)
documents = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3)
                         | st.dictionaries(st.text(max_size=4), inner, max_size=4), max_leaves=20)
objects = st.dictionaries(st.text(max_size=4), documents, max_size=5)


def _size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def test_empty_store_reads_as_an_empty_object_and_refuses_a_patch() -> None:
    store = MmdsStore()
    assert store.value() == {} and not store.initialized
    with pytest.raises(MmdsError, match=NOT_INITIALIZED):
        store.patch({"a": 1})


def test_put_then_patch_merges_and_removes_keys() -> None:
    store = MmdsStore()
    store.put({"latest": {"meta-data": {"ami-id": "ami-1", "drop": 1}}})
    store.patch({"latest": {"meta-data": {"drop": None, "new": "x"}}})
    assert store.value() == {"latest": {"meta-data": {"ami-id": "ami-1", "new": "x"}}}


def test_limit_counts_compact_json_and_a_refusal_changes_nothing() -> None:
    store = MmdsStore(size_limit=20)
    store.put({"k": "v"})
    with pytest.raises(MmdsLimitExceeded, match=LIMIT_EXCEEDED):
        store.put({"k": "v" * 20})
    with pytest.raises(MmdsLimitExceeded):
        store.patch({"k2": "v" * 20})
    assert store.value() == {"k": "v"}
    store.put({"abcdefghijklmn": 1})  # exactly 20 bytes: {"abcdefghijklmn":1}
    assert _size(store.value()) == 20


@settings(max_examples=150, deadline=None)
@given(first=objects, patches=st.lists(objects, max_size=4), limit=st.integers(2, 400))
def test_store_follows_rfc7396_and_never_exceeds_its_limit(first: dict[str, Any], patches: list[dict[str, Any]],
                                                           limit: int) -> None:
    store = MmdsStore(size_limit=limit)
    expected: Any = None
    try:
        store.put(first)
        expected = first
    except MmdsLimitExceeded:
        assert _size(first) > limit
    for patch in patches:
        if expected is None:
            with pytest.raises(MmdsError):
                store.patch(patch)
            continue
        candidate = merge_patch(expected, patch)
        try:
            store.patch(patch)
            expected = candidate
        except MmdsLimitExceeded:
            assert _size(candidate) > limit
        assert store.value() == expected and _size(expected) <= limit


def test_merge_patch_rfc7396_examples() -> None:
    # RFC 7396, Appendix A (a few of its rows).
    assert merge_patch({"a": "b"}, {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": "b"}, {"a": None}) == {}
    assert merge_patch({"a": ["b"]}, {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}) == {"a": {"b": "d"}}
    assert merge_patch({"e": None}, {"a": 1}) == {"e": None, "a": 1}
    assert merge_patch([1, 2], {"a": "b", "c": None}) == {"a": "b"}


def test_guest_lookup_as_json_and_imds_text() -> None:
    store = MmdsStore()
    store.put({"latest": {"meta-data": {"ami-id": "ami-1", "net": {"mac": "x"}}, "phones": ["+1", "+2"]}})
    assert store.lookup("/latest/meta-data/ami-id") == '"ami-1"'
    assert store.lookup("/latest/meta-data/ami-id", imds=True) == "ami-1"
    assert store.lookup("/latest/meta-data/", imds=True) == "ami-id\nnet/"
    assert store.lookup("/latest/phones/1") == '"+2"'
    assert json.loads(store.lookup("/")) == store.value()
    with pytest.raises(MmdsNotFound):
        store.lookup("/latest/nope")
    with pytest.raises(MmdsError, match="unsupported type"):
        store.lookup("/latest/phones", imds=True)


def test_concurrent_writers_leave_one_whole_document() -> None:
    store = MmdsStore()
    store.put({})

    def writer(n: int) -> None:
        for i in range(200):
            store.patch({f"w{n}": i})

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.value() == {f"w{n}": 199 for n in range(4)}
