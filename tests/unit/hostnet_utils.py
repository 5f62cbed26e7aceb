"""What the tests that make namespaces and TAPs on this host share: the root guard, unique names,
and a record directory whose setups are removed afterwards."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from firelet.hostnet import down, list_setups

_counter = itertools.count()


def require_root_and_tun() -> None:
    """Fail the whole module (not skip it) where namespaces and TAPs cannot be made."""
    if os.geteuid() != 0 or not Path("/dev/net/tun").exists():  # pragma: no cover - the CI machine is root
        pytest.fail("these tests make network namespaces and TAPs: run them as root with /dev/net/tun",
                    pytrace=False)


def unique(prefix: str) -> str:
    """A link or namespace name no other test of this run (nor a parallel run) uses; short, as
    interface names hold 15 bytes."""
    return f"{prefix}{os.getpid() % 10000}{next(_counter)}"


def setups_removed_after(state: Path) -> Iterator[Path]:
    """For a fixture: yields the record directory ``state``, then takes down every setup recorded
    in it, whatever the test did."""
    yield state
    for setup in list_setups(state):
        down(setup.name, state)
