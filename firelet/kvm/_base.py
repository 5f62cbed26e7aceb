"""The one place KVM ioctls are issued, so every failure becomes a :class:`KvmError`.

``fcntl.ioctl`` copies a ``bytes`` argument and refuses one over 1024 bytes;
passing the ctypes object itself (a mutable buffer, ``mutate_flag=True``) lets
the kernel read and write it in place, whatever its size.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
from collections.abc import Callable
from functools import cache

from firelet.errors import FireletError


class KvmError(FireletError):
    """A KVM ioctl failed; ``errno`` and ``request`` tell the VMM which and why."""

    def __init__(self, message: str, *, errno_: int = 0, request: str = "") -> None:
        super().__init__(message)
        self.errno = errno_
        self.request = request


@cache
def _names() -> dict[int, str]:
    from firelet.kvm import ioctls

    names: dict[int, str] = {}
    for name, value in vars(ioctls).items():
        if name.startswith("KVM_") and not name.startswith("KVM_CAP_"):
            names.setdefault(value, name)
    return names


def request_name(request: int) -> str:
    """The kernel's name of an ioctl request number (for messages)."""
    return _names().get(request, f"ioctl {request:#x}")


_INT_MIN, _INT_MAX = -(1 << 31), (1 << 31) - 1


@cache
def _libc_ioctl() -> Callable[..., int]:
    func = ctypes.CDLL(None, use_errno=True).ioctl
    func.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong]
    func.restype = ctypes.c_int
    return func


def _ioctl_ulong(fd: int, request: int, arg: int) -> int:
    """ioctl with an unsigned long value, which fcntl.ioctl cannot pass (it takes a C int)."""
    result = _libc_ioctl()(fd, request, arg)
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


def ioctl(fd: int, request: int, arg: int | ctypes.Structure | ctypes.Array | ctypes.c_uint64 = 0) -> int:
    """Issue one ioctl; an int ``arg`` is passed by value, a ctypes object by reference.

    Returns the ioctl's non-negative result; failures raise :class:`KvmError`.
    """
    try:
        if isinstance(arg, int):
            if _INT_MIN <= arg <= _INT_MAX:
                return fcntl.ioctl(fd, request, arg)
            return _ioctl_ulong(fd, request, arg)
        return fcntl.ioctl(fd, request, arg, True)
    except OSError as exc:
        raise kvm_error(request, exc) from exc


def kvm_error(request: int, exc: OSError) -> KvmError:
    code = exc.errno or 0
    name = request_name(request)
    text = os.strerror(code) if code else str(exc)
    hint = ""
    if code == errno.EBADF:
        hint = " (the KVM file descriptor is closed or not a KVM fd)"
    elif code == errno.ENOTTY:
        hint = " (the file descriptor is not a KVM device, VM or vCPU)"
    return KvmError(f"{name} failed: {text}{hint}", errno_=code, request=name)
