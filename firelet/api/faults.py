"""How a request ends early: a :class:`Fault` and Firecracker's words for the state rules."""

from __future__ import annotations

NOT_AFTER_BOOT = "The requested operation is not supported after starting the microVM."
NOT_BEFORE_BOOT = "The requested operation is not supported before starting the microVM."


class Fault(Exception):
    """Ends a request with a 400 (or ``status``) and this message as ``fault_message``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
