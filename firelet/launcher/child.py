"""The forked child's side: stop being the launcher, then be firelet-vmm.

Runs right after ``os.fork()`` in the child, which starts with a copy of a
single-threaded launcher (no KVM fds, no locks held: see docs/launcher.md). It
leaves nothing of the launcher reachable, confines itself when the launch is
jailed (firelet-jailer's ``confine``), then calls firelet-vmm's own ``main`` with
the requested arguments, the code path the ``firelet-vmm`` command runs, and exits
with its status without ever returning into the launcher's code.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

#: firelet-vmm's exit status for a bug in firelet (as firelet.cli.vmm.main uses it).
_INTERNAL_ERROR = 70


def become_vmm(argv: list[str], *, name: str, cwd: str | None, stdio: tuple[int, int, int],
               handlers: Mapping[int, Any], drop_launcher: Callable[[], None],
               confine: Callable[[], None] | None = None) -> NoReturn:
    """Turn this freshly forked child into a VMM running ``firelet-vmm argv``; never returns.

    ``stdio`` are the fds to become 0, 1 and 2 (opened by the launcher before the fork,
    so a bad path fails the launch request, not the child); ``handlers`` the signal
    dispositions the launcher found at its start; ``drop_launcher`` closes the
    launcher's sockets, selector and pipes in this process; ``confine``, for a jailed
    launch, confines the process (firelet-jailer's code path: it ends the child itself
    on a failure) once it holds nothing of the launcher and its stdio is in place.
    """
    code = _INTERNAL_ERROR
    try:
        # Nothing made before the fork is ever collected here: the collector neither writes
        # to the shared pages nor finalises a launcher object whose fd number a VMM fd reuses.
        gc.freeze()
        signal.set_wakeup_fd(-1)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        os.setsid()  # its own session: a signal to the launcher's terminal or group does not reach it
        drop_launcher()
        for target, fd in enumerate(stdio):
            if fd != target:
                os.dup2(fd, target)
        if confine is not None:
            confine()
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # every fd not the VMM's own (close_range(2))
        if cwd is not None:
            os.chdir(cwd)  # in a jail: a path in the jail
        from firelet.cli.lean import dump_stacks_on_signal
        from firelet.cli.vmm import main, set_process_name

        set_process_name(name)
        dump_stacks_on_signal()  # what firelet-vmm's console() does before main
        code = main(argv, prog="firelet-vmm")
    except SystemExit as exc:  # argparse's --help, --version and usage errors
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    except BaseException as exc:  # a bug in firelet: one line, never back into the launcher's loop
        try:
            print(f"firelet-vmm: internal error: {type(exc).__name__}: {exc} (please report firelet's bug)",
                  file=sys.stderr)
        except BaseException:
            pass
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        os._exit(code)
