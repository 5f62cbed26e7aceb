"""The registration table: every kind of device the builder makes, in planning order.

Adding a kind is its device package, its spec in :mod:`firelet.builder.kinds`, and one
line here. The order is part of the guest's view: virtio windows and IRQs are handed out
in it (the drives' windows come first, as they always have), so a new kind goes last.
"""

from __future__ import annotations

from firelet.builder.kinds.block import BLOCK_KIND
from firelet.builder.kinds.boot_timer import BOOT_TIMER_KIND
from firelet.builder.kinds.i8042 import I8042_KIND
from firelet.builder.kinds.net import NET_KIND
from firelet.builder.kinds.serial import SERIAL_KIND
from firelet.builder.spec import DeviceKinds

DEVICE_KINDS = DeviceKinds([BOOT_TIMER_KIND, SERIAL_KIND, I8042_KIND, BLOCK_KIND, NET_KIND])
