"""Installs a compiled filter on the calling thread, through prctl(2) and seccomp(2) by ctypes.

No SECCOMP_FILTER_FLAG_TSYNC: each thread kind has its own filter, so each thread installs its
own. A filter cannot be removed, and threads created afterwards inherit it (stacked filters all
run; the strictest action wins).
"""

from __future__ import annotations

import ctypes
import os

from firelet.seccomp.bpf import Insn, encode
from firelet.seccomp.policy import SeccompError

PR_SET_NO_NEW_PRIVS = 38  # linux/prctl.h
M_ARENA_MAX = -8  # glibc malloc.h: mallopt's limit on malloc arenas
SYS_SECCOMP = 317  # asm/unistd_64.h
SECCOMP_SET_MODE_FILTER = 1  # linux/seccomp.h


class _SockFprog(ctypes.Structure):
    """struct sock_fprog (linux/filter.h): the program's length and a pointer to its instructions."""

    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_libc: ctypes.CDLL | None = None


def _c() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def set_no_new_privs() -> None:
    """Required before an unprivileged seccomp(2); also what the jailer wants: execve never gains privileges."""
    libc = _c()
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise SeccompError(f"prctl(PR_SET_NO_NEW_PRIVS) failed: {os.strerror(err)}")


def install_program(program: list[Insn]) -> None:
    """Set no_new_privs and attach ``program`` to the calling thread only."""
    code = encode(program)
    buf = ctypes.create_string_buffer(code, len(code))
    prog = _SockFprog(len(program), ctypes.addressof(buf))
    set_no_new_privs()
    libc = _c()
    libc.syscall.restype = ctypes.c_long
    if libc.syscall(ctypes.c_long(SYS_SECCOMP), ctypes.c_uint(SECCOMP_SET_MODE_FILTER), ctypes.c_uint(0),
                    ctypes.byref(prog)) != 0:
        err = ctypes.get_errno()
        raise SeccompError(f"seccomp(SECCOMP_SET_MODE_FILTER) refused a {len(program)}-instruction filter: "
                           f"{os.strerror(err)}")


def prepare_process() -> None:
    """Make glibc's one-time file reads happen before any thread is confined, or never.

    Two were seen killing a confined VMM: glibc shrinking a thread's own malloc arena reads
    /proc/sys/vm/overcommit_memory the first time (one arena for the whole process means no
    thread arenas; CPython allocates under the GIL, so one arena costs no parallelism), and
    the first ``pthread_exit`` (CPython's end of a daemon thread that wakes during interpreter
    shutdown) loads libgcc_s for unwinding: loaded here, it is not opened again.
    """
    libc = _c()
    if libc.mallopt(M_ARENA_MAX, 1) != 1:
        raise SeccompError("mallopt(M_ARENA_MAX, 1) failed: cannot keep malloc off its lazy file reads")
    try:
        ctypes.CDLL("libgcc_s.so.1")
    except OSError:  # a C library without the split keeps its unwinder inside
        pass
