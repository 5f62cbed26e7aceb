"""KVM calls that mostly wait in the kernel, run in order on one helper thread.

Each change to a VM's memory slots or I/O buses (a memory region, the irqchip or
PIT devices, an irqfd, an ioeventfd, a coalesced zone) may wait out an SRCU
grace period: 5-60 ms each in the nested rig before its keeper VM, 1-3 ms since.
The builder hands such calls, the devices' among them (``device_manager``'s
``later``), to a :class:`KernelWaits` and goes on working in Python meanwhile;
all are done before any vCPU exists.

This is not the event loop's call queue (``EventLoop.call_soon_threadsafe``) on
purpose: these calls block in the kernel for milliseconds each, and the loop
must stay free to serve the API and devices meanwhile; and they run during a
build, before (for ``MicroVM``) the loop thread even exists. A worker thread
with its own ordered list is the right shape for work that waits.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from firelet import threads


class KernelWaits:
    """Calls run in the order added; :meth:`finish` waits for them all and re-raises
    the first failure (the calls after it are skipped)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._calls: list[Callable[[], Any] | None] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=threads.KVM_SETUP, daemon=True)
        self._thread.start()

    def add(self, call: Callable[[], Any]) -> None:
        self._push(call)

    def _push(self, call: Callable[[], Any] | None) -> None:
        with self._cond:
            self._calls.append(call)
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._calls)
                call = self._calls.pop(0)
            if call is None:
                return
            if self._error is None:
                try:
                    call()
                except BaseException as exc:  # handed to the caller by finish()
                    self._error = exc

    def join(self) -> None:
        self._push(None)  # the end marker
        self._thread.join()

    def finish(self) -> None:
        self.join()
        if self._error is not None:
            raise self._error
