"""Configuration files: Firecracker's ``--config-file`` JSON read, validated and written back."""

from __future__ import annotations

import os

import msgspec

from firelet.config.decoding import ConfigError, decode_json
from firelet.config.model import VmConfig


def decode_config(data: bytes, *, source: str = "config") -> VmConfig:
    """A whole configuration file's bytes as a validated :class:`VmConfig`; ``source`` prefixes errors."""
    try:
        return decode_json(data, VmConfig)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_config_file(path: str | os.PathLike[str]) -> VmConfig:
    """Read and validate a Firecracker-style ``--config-file``; refuse what firelet cannot do yet."""
    from firelet.config.support import refuse_unsupported

    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it: {exc.strerror}") from None
    cfg = decode_config(data, source=f"config file {path}")
    try:
        refuse_unsupported(cfg)
    except ConfigError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    return cfg


def encode_config(cfg: VmConfig) -> bytes:
    """The configuration as Firecracker-shaped JSON (what ``GET /vm/config`` returns)."""
    return msgspec.json.encode(cfg)
