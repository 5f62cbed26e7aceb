"""The MMDS data store: one JSON document with Firecracker's PUT, PATCH and GET semantics.

- ``put`` replaces the whole document and marks the store initialised;
- ``patch`` applies an RFC 7396 JSON merge patch, only once initialised;
- both refuse a result whose compact JSON encoding is larger than the limit
  (Firecracker's ``--mmds-size-limit``, default the API payload limit) and
  leave the store unchanged;
- ``value`` is the document (``{}`` before the first ``put``, as Firecracker's
  ``GET /mmds`` answers); ``lookup`` is what a guest's GET of a path sees, as
  JSON or in EC2 IMDS's plain-text listing.

The API thread writes while a device's thread may read, so every access
takes the store's lock.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from firelet.errors import FireletError

#: Firecracker's default ``--mmds-size-limit`` is the API payload limit (bytes).
DEFAULT_SIZE_LIMIT = 51200


class MmdsError(FireletError):
    """A request the data store refuses; the message is Firecracker's wording."""


class MmdsLimitExceeded(MmdsError):
    """The document would be larger than the store's limit (Firecracker answers 413)."""


class MmdsNotFound(MmdsError):
    """No value at the requested path."""


NOT_INITIALIZED = "The MMDS data store is not initialized."
LIMIT_EXCEEDED = "The MMDS patch request doesn't fit."
NOT_FOUND = "The MMDS resource does not exist."
UNSUPPORTED_VALUE = "Cannot retrieve value. The value has an unsupported type."


def _encoded_size(value: Any) -> int:
    try:
        return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    except RecursionError:
        raise MmdsError("The MMDS document is nested too deeply.") from None


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396: objects merge key by key, ``null`` removes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


class MmdsStore:
    """One microVM's metadata document, bounded by ``size_limit`` bytes of compact JSON."""

    def __init__(self, size_limit: int = DEFAULT_SIZE_LIMIT) -> None:
        if size_limit <= 0:
            raise ValueError(f"size_limit: expected a positive number of bytes, got {size_limit}")
        self.size_limit = size_limit
        self._data: Any = None
        self._initialized = False
        self._lock = threading.Lock()

    @property
    def initialized(self) -> bool:
        return self._initialized

    def put(self, value: Any) -> None:
        """Replace the whole document."""
        if _encoded_size(value) > self.size_limit:
            raise MmdsLimitExceeded(LIMIT_EXCEEDED)
        with self._lock:
            self._data = value
            self._initialized = True

    def patch(self, patch: Any) -> None:
        """Merge ``patch`` into the document (RFC 7396); all or nothing."""
        with self._lock:
            if not self._initialized:
                raise MmdsError(NOT_INITIALIZED)
            try:
                merged = merge_patch(self._data, patch)
            except RecursionError:
                raise MmdsError("The MMDS patch is nested too deeply.") from None
            if _encoded_size(merged) > self.size_limit:
                raise MmdsLimitExceeded(LIMIT_EXCEEDED)
            self._data = merged

    def value(self) -> Any:
        """The whole document; ``{}`` before the first ``put``. Callers must not modify it."""
        with self._lock:
            return {} if self._data is None else self._data

    def lookup(self, path: str, *, imds: bool = False) -> str:
        """The value at a guest's request path (``/latest/meta-data/``), as JSON or IMDS text.

        IMDS text lists an object's keys one per line (sub-objects end in ``/``)
        and gives a string as itself; other values have no IMDS form.
        """
        node = self.value()
        for part in path.strip("/").split("/") if path.strip("/") else []:
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise MmdsNotFound(NOT_FOUND)
        if not imds:
            return json.dumps(node, separators=(",", ":"), ensure_ascii=False)
        if isinstance(node, dict):
            return "\n".join(f"{k}/" if isinstance(v, dict) else k for k, v in node.items())
        if isinstance(node, str):
            return node
        raise MmdsError(UNSUPPORTED_VALUE)
