"""Module loggers that cost nothing until something is logged.

Importing :mod:`logging` takes tens of milliseconds in the nested rig (it pulls
in traceback, string, weakref...), and most VMM runs log nothing: the VMM's
modules take their logger from :func:`get_logger`, which imports ``logging``
on the first call made through it. Until something imports ``logging`` no
level or handler can have been configured, so DEBUG and INFO records would be
dropped anyway: those calls return at once without importing it.
"""

from __future__ import annotations

import sys
from typing import Any

#: ``logging``'s level numbers, for callers that must not import it just to compare.
DEBUG = 10
INFO = 20
WARNING = 30


class LazyLogger:
    """Stands for ``logging.getLogger(name)``; the real logger is made on first use."""

    __slots__ = ("_name", "_logger")

    def __init__(self, name: str) -> None:
        self._name = name
        self._logger: Any = None

    def debug(self, msg: str, *args: Any, **kwargs: Any) -> None:
        if self._logger is not None or "logging" in sys.modules:
            self.__getattr__("debug")(msg, *args, **kwargs)

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        if self._logger is not None or "logging" in sys.modules:
            self.__getattr__("info")(msg, *args, **kwargs)

    def isEnabledFor(self, level: int) -> bool:  # logging.Logger's name, so callers need not know
        if self._logger is None and "logging" not in sys.modules:
            return level >= WARNING
        return bool(self.__getattr__("isEnabledFor")(level))

    def __getattr__(self, attr: str) -> Any:
        logger = self._logger
        if logger is None:
            import logging

            logger = self._logger = logging.getLogger(self._name)
        return getattr(logger, attr)


def get_logger(name: str) -> LazyLogger:
    return LazyLogger(name)
