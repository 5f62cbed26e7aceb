"""How a microVM ended, as one value the VMM, the CLI and the API agree on."""

from __future__ import annotations

import enum
from typing import NamedTuple


class ExitKind(enum.Enum):
    #: The guest reset itself (``reboot`` with ``reboot=k``: i8042 pulse, or a PSCI-like system event).
    RESET = "guest reset"
    #: The guest asked to power off (KVM_SYSTEM_EVENT_SHUTDOWN).
    POWER_OFF = "guest powered off"
    #: The host stopped the VM (Ctrl-C, SIGTERM, ``stop()``).
    STOPPED = "stopped by the host"
    #: The guest triple-faulted (KVM_EXIT_SHUTDOWN): a crashed or broken guest.
    TRIPLE_FAULT = "guest triple-faulted"
    #: The guest reported a crash (KVM_SYSTEM_EVENT_CRASH), or panicked.
    CRASH = "guest crashed"
    #: KVM could not run the guest (FAIL_ENTRY, INTERNAL_ERROR, unexpected exits).
    KVM_ERROR = "KVM failed to run the guest"
    #: A bug or resource failure inside the VMM.
    VMM_ERROR = "VMM error"
    #: The caller's timeout ran out before the guest ended.
    TIMEOUT = "timed out"


_CLEAN = {ExitKind.RESET, ExitKind.POWER_OFF, ExitKind.STOPPED}


class VmExit(NamedTuple):
    kind: ExitKind
    detail: str = ""

    @property
    def clean(self) -> bool:
        return self.kind in _CLEAN

    @property
    def exit_code(self) -> int:
        """The process exit status for this outcome (0 for a clean end)."""
        if self.clean:
            return 0
        if self.kind is ExitKind.TIMEOUT:
            return 124
        return 1

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.detail}" if self.detail else self.kind.value
