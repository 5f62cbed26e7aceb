"""Where firelet keeps built artifacts (kernels, root filesystems, the rig).

Artifacts live outside the checkout, keyed by the hash of what they are built
from, so that a second build returns at once and CI reuses them across runs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache root: ``$FIRELET_CACHE``, else ``$XDG_CACHE_HOME/firelet``, else ``~/.cache/firelet``."""
    env = os.environ.get("FIRELET_CACHE")
    if env:
        root = Path(env)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = Path(xdg) / "firelet" if xdg else Path.home() / ".cache" / "firelet"
    root.mkdir(parents=True, exist_ok=True)
    return root


def content_key(*parts: bytes | str) -> str:
    """A short, stable hash of the inputs an artifact is built from."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()[:16]


def repo_root() -> Path:
    """The checkout firelet runs from (where ``guest/`` and ``bench/`` live)."""
    return Path(__file__).resolve().parents[2]
