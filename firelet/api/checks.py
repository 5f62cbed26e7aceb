"""Checks a request's host files when the request arrives, as Firecracker opens them at the PUT.

Firecracker opens a kernel, initrd or drive image when the ``PUT`` names it and
refuses the request if it cannot; firelet does the same rather than failing
only at ``InstanceStart``. Errors read like Rust's ``io::Error`` display
("No such file or directory (os error 2)"), which is what Firecracker prints.
"""

from __future__ import annotations

import errno
import os
import stat


def os_error_text(exc: OSError) -> str:
    """``No such file or directory (os error 2)``: the strerror and the errno, as Firecracker shows them."""
    code = exc.errno or 0
    return f"{exc.strerror or os.strerror(code)} (os error {code})"


def open_problem(path: str, *, writable: bool = False, block_device_ok: bool = False) -> str | None:
    """Why ``path`` cannot be opened for reading (and writing), or None when it can.

    The file is opened non-blocking (a FIFO cannot stall the API) and closed at
    once; a directory or other non-file is refused with the errno a read would get.
    """
    flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        return os_error_text(exc)
    except ValueError:  # an embedded NUL byte
        return os_error_text(OSError(errno.EINVAL, os.strerror(errno.EINVAL)))
    try:
        mode = os.fstat(fd).st_mode
    finally:
        os.close(fd)
    if stat.S_ISREG(mode) or (block_device_ok and stat.S_ISBLK(mode)):
        return None
    code = errno.EISDIR if stat.S_ISDIR(mode) else errno.EINVAL
    return os_error_text(OSError(code, os.strerror(code)))
