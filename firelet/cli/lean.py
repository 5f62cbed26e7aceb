"""Keep a VMM process's start lean: what firelet's commands do first when they are the process.

Only the console scripts (and ``python -m firelet``) call this, never library code: it
changes ``sys.modules`` for the whole process.
"""

import gc
import os
import sys
from collections.abc import Callable

#: Sub-commands whose process is a VMM: their start is the microVM's boot time.
VMM_COMMANDS = ("run",)


def hide_typing_extensions() -> None:
    """Make ``import typing_extensions`` fail in this process, unless something already imported it.

    msgspec imports typing_extensions whenever it is installed (test tools and many
    libraries bring it) only to recognise that package's own typing forms; firelet's
    models use ``typing`` alone, so msgspec decodes them the same without it. In the nested
    rig its import (with ``inspect``, ``ast``, ``dis``...) was ~0.1 s of the VMM's start.
    """
    sys.modules.setdefault("typing_extensions", None)  # type: ignore[arg-type]  # None: the import fails (documented)


def skip_message_catalog_search() -> None:
    """Spare argparse's gettext its catalog search when the language is C anyway.

    argparse asks gettext for each message it builds, and with ``LANG=C.UTF-8`` (no
    ``LANGUAGE``) gettext looks for ``C.UTF-8`` catalogs on disk at every call, only to
    fall back to the untranslated text: in the rig that was ~25 ms of the VMM's start.
    ``LANGUAGE=C`` gives the same untranslated text without the search. Any other
    language is left as it is.
    """
    if os.environ.get("LANGUAGE"):
        return
    language = next((os.environ[v] for v in ("LC_ALL", "LC_MESSAGES", "LANG") if os.environ.get(v)), "C")
    if language in ("C", "POSIX") or language.startswith("C."):
        os.environ["LANGUAGE"] = "C"


_gc_deferred = False


def defer_gc() -> None:
    """Turn the cyclic garbage collector off until :func:`resume_gc`, i.e. while the VMM starts.

    Importing and building allocate hundreds of thousands of long-lived objects and
    nearly no garbage, yet each 700 allocations trigger a collection: ~5% of the
    imports' time on the host, more under the rig's emulated CPU.
    """
    global _gc_deferred
    if gc.isenabled():
        gc.disable()
        _gc_deferred = True


def resume_gc() -> None:
    """Once the VM runs: freeze what start-up made (later collections skip it), collect again."""
    global _gc_deferred
    if _gc_deferred:
        _gc_deferred = False
        gc.freeze()
        gc.enable()


def dump_stacks_on_signal() -> None:
    """For a VMM that seems stuck: ``kill -USR2 <pid>`` prints where each thread is.

    The stacks are written from the Python-level handler, on the main thread and
    holding the GIL, then the :func:`on_dump_signal` hooks run (each vCPU's
    registers, say). Not from faulthandler's C signal handler: that one reads
    every thread's frames without the GIL, while a vCPU thread returning from an
    ioctl frees them, and it crashed ``firelet run`` (SIGSEGV) in 3 of 14 dumps
    of a running guest in the rig. The main threads of ``firelet run`` and
    ``firelet-vmm`` wake at least every 0.5 s, so the handler runs promptly even
    when the signal lands on another thread. (vCPU kicks use SIGRTMIN+1.)
    """
    import signal

    signal.signal(signal.SIGUSR2, _dump_stacks_and_run_hooks)


def _dump_stacks_and_run_hooks(_signum: int, _frame: object) -> None:
    import faulthandler

    try:  # under the GIL: no thread can pop a frame while faulthandler reads it
        sys.stderr.flush()
        faulthandler.dump_traceback(sys.stderr, all_threads=True)
    except (OSError, ValueError, AttributeError) as exc:  # stderr closed or not a real file
        print(f"firelet: thread stacks unavailable: {exc}", file=sys.stderr)
    _run_dump_hooks()


_dump_hooks: list[Callable[[], None]] = []


def on_dump_signal(hook: Callable[[], None]) -> Callable[[], None]:
    """Run ``hook`` after the stacks on each SIGUSR2; returns a function that removes it."""
    _dump_hooks.append(hook)
    return lambda: _dump_hooks.remove(hook) if hook in _dump_hooks else None


def _run_dump_hooks() -> None:
    for hook in list(_dump_hooks):
        try:
            hook()
        except Exception as exc:  # a diagnostic must not end the VMM
            print(f"firelet: state dump failed: {exc}", file=sys.stderr)
