"""What a setup made, kept on disk so that removing it undoes exactly that.

One JSON file per setup under /run/firelet/net (a tmpfs: like the namespaces,
links and nft tables it describes, it does not outlive a reboot). The file is
claimed with O_EXCL before anything is made, so two ``up`` runs cannot take the
same name, and rewritten after every step, so an interrupted ``up`` or ``down``
leaves a record that ``down`` can finish.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from ipaddress import IPv4Interface
from pathlib import Path
from typing import Any, Literal

from firelet.hostnet.addressing import GuestSettings
from firelet.hostnet.errors import BadInput, HostNetError, NameTaken, NotPermitted

DEFAULT_STATE_DIR = Path("/run/firelet/net")

Kind = Literal["netns", "link", "nft-table", "sysctl"]


@dataclass(frozen=True)
class Made:
    """One thing a setup made, or changed (a sysctl, with the value it had ``before``)."""

    kind: Kind
    name: str
    netns: str | None = None
    before: str | None = None

    def describe(self) -> str:
        where = f" in netns {self.netns}" if self.netns else ""
        if self.kind == "netns":
            return f"network namespace {self.name}"
        if self.kind == "link":
            return f"interface {self.name}{where}"
        if self.kind == "nft-table":
            return f"nft table ip {self.name}{where}"
        return f"sysctl {self.name.replace('/', '.')}{where} (was {self.before})"


@dataclass
class NetSetup:
    """A host network setup for one microVM: a TAP, maybe in a namespace with a veth pair and NAT."""

    name: str
    tap: str
    tap_address: IPv4Interface
    netns: str | None = None
    owner: int | None = None
    veth_host: str | None = None
    veth_host_address: IPv4Interface | None = None
    veth_netns: str | None = None
    veth_netns_address: IPv4Interface | None = None
    nat_out: str | None = None
    made: list[Made] = field(default_factory=list)

    @property
    def guest(self) -> GuestSettings:
        return GuestSettings.for_tap(self.tap_address)

    def to_json(self) -> str:
        data: dict[str, Any] = {
            key: (str(value) if isinstance(value, IPv4Interface) else value)
            for key, value in vars(self).items() if key != "made"
        }
        data["made"] = [vars(m) for m in self.made]
        return json.dumps(data, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> NetSetup:
        data = json.loads(text)
        made = [Made(**m) for m in data.pop("made")]
        for key in ("tap_address", "veth_host_address", "veth_netns_address"):
            if data.get(key) is not None:
                data[key] = IPv4Interface(data[key])
        return cls(**data, made=made)


def record_path(state_dir: Path, name: str) -> Path:
    return state_dir / f"{name}.json"


def claim(state_dir: Path, setup: NetSetup) -> Path:
    """Create the setup's record, refusing a name that has one."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise HostNetError(f"cannot make the record directory {state_dir}: {exc.strerror or exc}") from None
    path = record_path(state_dir, setup.name)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise NameTaken(
            f"a network setup named {setup.name!r} exists already: remove it with `firelet net down {setup.name}`"
        ) from None
    with os.fdopen(fd, "w") as f:
        f.write(setup.to_json())
    return path


def save(state_dir: Path, setup: NetSetup) -> None:
    """Rewrite the record atomically (a reader sees the old or the new one, never half)."""
    path = record_path(state_dir, setup.name)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(setup.to_json())
    os.replace(tmp, path)


def load(state_dir: Path, name: str) -> NetSetup:
    path = record_path(state_dir, name)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise BadInput(f"no network setup named {name!r} (`firelet net list` shows them)") from None
    try:
        return NetSetup.from_json(text)
    except (ValueError, TypeError, KeyError) as exc:
        raise HostNetError(f"the record {path} is damaged ({exc}): remove by hand what it made, then it") from None


def forget(state_dir: Path, name: str) -> None:
    record_path(state_dir, name).unlink(missing_ok=True)


def load_all(state_dir: Path) -> list[NetSetup]:
    try:
        if not state_dir.exists():
            return []
        readable = os.access(state_dir, os.R_OK | os.X_OK)  # glob would quietly find nothing
    except PermissionError:
        readable = False
    if not readable:
        raise NotPermitted(f"cannot read the network setup records in {state_dir}: run this as root (sudo)")
    return [load(state_dir, p.stem) for p in sorted(state_dir.glob("*.json"))]
