"""The root of firelet's exceptions.

Every error a person can cause or fix (bad flags, a missing file, a missing
package, a guest that never came up) is a :class:`FireletError` whose message
is one line saying what is wrong and what to do. The CLI prints exactly that
line and exits non-zero; anything else is a bug in firelet and is logged with
its traceback.
"""

from __future__ import annotations


class FireletError(Exception):
    """A failure with a message written for people.

    ``exit_code`` is what the CLI exits with when this error ends it.
    """

    exit_code: int = 1

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(FireletError):
    """Bad command-line flags or configuration values."""

    exit_code = 2


class MissingToolError(FireletError):
    """A program or package firelet needs is not installed."""
