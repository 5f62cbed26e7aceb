"""firelet: a microVM monitor in Python on Linux KVM.

The public library face is :class:`firelet.MicroVM`; it is imported lazily so
that ``import firelet`` stays cheap for the VMM process and the CLI alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
#: The Firecracker release whose API, configuration file and process flags firelet implements
#: (its ``firecracker.yaml``, 1.17.0-dev). ``GET /version`` reports it; ``--version`` prints both.
FIRECRACKER_API_VERSION = "1.17.0"

if TYPE_CHECKING:  # pragma: no cover
    from firelet.microvm import MicroVM

__all__ = ["FIRECRACKER_API_VERSION", "MicroVM", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "MicroVM":
        from firelet.microvm import MicroVM

        return MicroVM
    raise AttributeError(f"module 'firelet' has no attribute {name!r}")
