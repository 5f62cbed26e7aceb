"""The warm launcher: one parent with the VMM imported forks a firelet-vmm per microVM (docs/launcher.md).

- :mod:`~firelet.launcher.server`: the launcher process (``firelet launcher --socket PATH``).
- :mod:`~firelet.launcher.child`: what a forked child does to become firelet-vmm.
- :mod:`~firelet.launcher.jail`: a jailed launch, through firelet-jailer's own steps.
- :mod:`~firelet.launcher.jail`: a jailed launch, through firelet-jailer's own steps.
- :mod:`~firelet.launcher.client`: :class:`Launcher`, the Python API to it.
- :mod:`~firelet.launcher.fleet`: :class:`Fleet`, many microVMs from one config (``firelet fleet``).

The VMM never imports this package: the launcher runs firelet-vmm, not the other way round.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from firelet.launcher.client import Launcher as Launcher
    from firelet.launcher.fleet import Fleet as Fleet

__all__ = ["Fleet", "Launcher"]


def __getattr__(name: str) -> Any:
    """Import lazily: the launcher process itself needs neither the client nor the fleet."""
    if name == "Launcher":
        from firelet.launcher.client import Launcher

        return Launcher
    if name == "Fleet":
        from firelet.launcher.fleet import Fleet

        return Fleet
    raise AttributeError(name)
