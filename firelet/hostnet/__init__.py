"""Host networking for microVMs: TAPs, network namespaces, veth pairs and NAT.

Used by ``firelet net`` and by tests; never by the VMM, which only opens a TAP
that exists (pyroute2 stays out of the VMM's imports). The pieces
(:mod:`.netns`, :mod:`.links`, :mod:`.nat`) work alone; :func:`up` and
:func:`down` make and remove a whole setup and record what they made.
"""

from __future__ import annotations

from firelet.hostnet.addressing import GuestSettings
from firelet.hostnet.errors import BadInput, HostNetError, MissingKernelSupport, NameTaken, NotPermitted
from firelet.hostnet.record import DEFAULT_STATE_DIR, Made, NetSetup
from firelet.hostnet.setup import NetSpec, down, list_setups, up

__all__ = [
    "DEFAULT_STATE_DIR", "BadInput", "GuestSettings", "HostNetError", "Made", "MissingKernelSupport",
    "NameTaken", "NetSetup", "NetSpec", "NotPermitted", "down", "list_setups", "up",
]
