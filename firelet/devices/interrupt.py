"""The interrupt lines behind :class:`~firelet.devices.protocols.Interrupt`.

Devices hold an ``Interrupt`` and call ``trigger()``, knowing nothing of KVM. In
a running VM the object is an :class:`EventFdInterrupt`, whose eventfd the VM
builder registers with KVM as an irqfd for the device's GSI, so raising an
interrupt is one ``write`` with no ioctl and no lock. Tests pass a
:class:`CountingInterrupt`.
"""

from __future__ import annotations

import os

from firelet.devices.protocols import Interrupt as Interrupt  # devices import it from here too

__all__ = ["CountingInterrupt", "EventFdInterrupt", "Interrupt"]


class EventFdInterrupt:
    """An interrupt line backed by an eventfd (registered as a KVM irqfd)."""

    def __init__(self, gsi: int) -> None:
        self.gsi = gsi
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def trigger(self) -> None:
        try:
            os.eventfd_write(self.fd, 1)
        except BlockingIOError:  # counter saturated: an interrupt is pending anyway
            pass

    def close(self) -> None:
        os.close(self.fd)


class CountingInterrupt:
    """An interrupt that counts its triggers (for tests and for devices without a line)."""

    def __init__(self) -> None:
        self.count = 0

    def trigger(self) -> None:
        self.count += 1
