"""Named network namespaces, as ``ip netns`` keeps them, and doing things inside one.

A namespace is a bind mount of a ``/proc/PID/ns/net`` under ``/var/run/netns``;
pyroute2 makes and removes it the way iproute2 does, so ``ip netns`` sees ours
and we see its. Work inside a namespace is done either through a netlink socket
opened in it (:func:`rtnl`) or on a short-lived thread that has joined it
(:func:`run_in_netns`): ``setns`` moves only the calling thread, and what that
thread opens (sockets, /proc/sys/net files) or starts (a subprocess) belongs to
the namespace, while the rest of the process stays where it was.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from firelet.hostnet.errors import HostNetError, NameTaken

NETNS_DIR = Path("/var/run/netns")
CLONE_NEWNET = 0x40000000  # linux/sched.h

T = TypeVar("T")


def netns_path(name: str) -> Path:
    return NETNS_DIR / name


def netns_exists(name: str) -> bool:
    return netns_path(name).exists()


def list_netns() -> list[str]:
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def create_netns(name: str) -> None:
    """Make the namespace ``name``; refuses one that exists."""
    from pyroute2 import netns

    if netns_exists(name):
        raise NameTaken(f"network namespace {name!r} exists already: pick another name")
    try:
        netns.create(name)
    except FileExistsError:
        raise NameTaken(f"network namespace {name!r} exists already: pick another name") from None
    except OSError as exc:
        raise HostNetError(f"cannot make network namespace {name!r}: {exc.strerror or exc}") from None


def remove_netns(name: str) -> bool:
    """Unmount and delete the namespace's name; False if it was not there.

    The namespace itself lives on while a process is still inside it.
    """
    from pyroute2 import netns

    if not netns_exists(name):
        return False
    try:
        netns.remove(name)
    except FileNotFoundError:
        return False
    return True


def _setns(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if hasattr(os, "setns"):  # Python 3.12+
            os.setns(fd, CLONE_NEWNET)
        else:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


def run_in_netns(name: str | None, func: Callable[[], T]) -> T:
    """``func()`` on a thread inside namespace ``name`` (None: here, on this thread).

    For raw syscalls, /proc/sys/net files and subprocesses; not for pyroute2 handles,
    whose 0.9 line opens its socket lazily on whichever thread first uses it: use :func:`rtnl`.
    """
    if name is None:
        return func()
    path = netns_path(name)
    if not path.exists():
        raise HostNetError(f"network namespace {name!r} does not exist")
    outcome: list[Any] = []

    def inside() -> None:
        try:
            _setns(path)
            outcome.append((True, func()))
        except BaseException as exc:  # handed to the caller's thread below
            outcome.append((False, exc))

    thread = threading.Thread(target=inside, name=f"netns-{name}", daemon=True)
    thread.start()
    thread.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


@contextmanager
def rtnl(name: str | None) -> Iterator[Any]:
    """A pyroute2 route-netlink handle working in namespace ``name`` (None: this process's).

    pyroute2 has no type information, so the handle is typed ``Any``.
    """
    from pyroute2 import IPRoute, NetNS

    if name is not None and not netns_exists(name):
        raise HostNetError(f"network namespace {name!r} does not exist")
    handle = IPRoute() if name is None else NetNS(name, flags=0)
    try:
        yield handle
    finally:
        handle.close()


def is_missing(exc: BaseException) -> bool:
    """A netlink or OS error that says the object is not there (already removed)."""
    code = getattr(exc, "code", None) or getattr(exc, "errno", None)
    return code in (errno.ENODEV, errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL)
