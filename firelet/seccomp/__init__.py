"""Seccomp-bpf filters per thread kind: policies in Firecracker's seccompiler JSON, compiled here.

A process that wants its threads confined (``firelet-vmm``) calls :func:`enable` once at start;
each VMM thread then calls :func:`confine` with its kind at its own start point, before the
guest's first instruction, and the filter binds that thread only (and threads it creates later).
Without :func:`enable` (the library API, ``firelet run``: the user's own process) :func:`confine`
does nothing. The kinds and where each thread confines itself are in docs/seccomp.md; firelet's
own policy is ``policy.json`` beside this module. Only the standard library (ctypes when
installing): the VMM imports this at start.
"""

from __future__ import annotations

import os
import threading
import weakref

from firelet.errors import UsageError
from firelet.seccomp.policy import Filter, Policy, SeccompError, load_policy

__all__ = ["DEFAULT_POLICY_PATH", "FALLBACK_KINDS", "REQUIRED_KINDS", "Filter", "Policy", "SeccompError",
           "confine", "confined_kind", "default_policy", "enable", "enabled", "filter_for", "install", "load_policy",
           "resolve_policy", "unconfined_threads"]

DEFAULT_POLICY_PATH = os.path.join(os.path.dirname(__file__), "policy.json")
#: The kinds every policy must define: Firecracker's three (its filter files have exactly these).
REQUIRED_KINDS = ("vmm", "api", "vcpu")
#: firelet's other threads, and the kind whose filter they take when a policy lacks theirs.
FALLBACK_KINDS = {"main": "vmm", "metrics": "vmm", "watch": "vmm"}

_default: Policy | None = None
#: The policy this process confines its threads with (set by :func:`enable`); None: no confinement.
_active: Policy | None = None
#: Each confined thread and its kind (weak: a thread that ended leaves by itself).
_confined: weakref.WeakKeyDictionary[threading.Thread, str] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def default_policy() -> Policy:
    """firelet's own policy (read once per process)."""
    global _default
    if _default is None:
        _default = load_policy(DEFAULT_POLICY_PATH)
    return _default


def filter_for(kind: str, policy: Policy) -> Filter:
    """The filter of thread kind ``kind``, or of the kind it falls back to."""
    if kind in policy:
        return policy[kind]
    if kind in FALLBACK_KINDS and FALLBACK_KINDS[kind] in policy:
        return policy[FALLBACK_KINDS[kind]]
    raise SeccompError(f"the seccomp policy has no filter for thread kind {kind!r}; it defines "
                       f"{', '.join(sorted(policy))}")


def resolve_policy(no_seccomp: bool, seccomp_filter: str | None) -> Policy | None:
    """The policy that ``firelet-vmm``'s flags ask for; ``None`` means no filtering.

    ``--seccomp-filter FILE`` takes seccompiler's JSON (Firecracker takes the compiled output of
    seccompiler-bin; firelet compiles the JSON itself, at start). Every filter is compiled here, so
    a bad file fails before any thread runs.
    """
    if no_seccomp and seccomp_filter is not None:
        raise UsageError("--no-seccomp and --seccomp-filter contradict each other: give one of them")
    if no_seccomp:
        return None
    policy = default_policy() if seccomp_filter is None else load_policy(seccomp_filter)
    missing = [k for k in REQUIRED_KINDS if k not in policy]
    if missing:
        where = seccomp_filter or DEFAULT_POLICY_PATH
        raise SeccompError(f"seccomp filter {where}: no filter for thread kind(s) {', '.join(missing)}; "
                           f"a policy needs {', '.join(REQUIRED_KINDS)}")
    from firelet.seccomp.compiler import compile_policy

    compile_policy(policy)
    return policy


def install(kind: str, policy: Policy | None = None) -> None:
    """Confine the calling thread with ``kind``'s filter from ``policy`` (firelet's own by default).

    Sets no_new_privs first (seccomp(2) requires it of unprivileged callers). Irrevocable.
    """
    from firelet.seccomp.attach import install_program
    from firelet.seccomp.compiler import compile_filter

    install_program(compile_filter(filter_for(kind, policy if policy is not None else default_policy()), kind))


def enable(policy: Policy) -> None:
    """Confine this process's VMM threads with ``policy`` from now on (each at its :func:`confine` call).

    ``firelet-vmm`` calls it once at start, before it starts any thread, with the policy its flags
    resolved to (:func:`resolve_policy`; ``--no-seccomp`` means it is never called), after it
    imported what its threads would import late. Every filter is compiled here, so a bad policy
    fails before any thread is confined; glibc is prepared (:func:`~firelet.seccomp.attach.prepare_process`).
    """
    global _active
    from firelet.seccomp.attach import prepare_process
    from firelet.seccomp.compiler import compile_policy

    compile_policy(policy)
    prepare_process()
    _active = policy


def enabled() -> bool:
    """Whether this process confines its threads (:func:`enable` was called)."""
    return _active is not None


def confine(kind: str) -> bool:
    """Confine the calling thread with ``kind``'s filter, if this process confines its threads.

    The one call every VMM thread makes at its confinement point (docs/seccomp.md has the
    table). Returns whether a filter was installed: False in a process that never called
    :func:`enable`. A thread confined twice is a wiring bug, refused in one line.
    """
    policy = _active
    if policy is None:
        return False
    thread = threading.current_thread()
    with _lock:
        if thread in _confined:
            raise SeccompError(f"thread {thread.name} is already confined (as {_confined[thread]}); "
                               f"it cannot also take the {kind} filter")
    install(kind, policy)
    with _lock:
        _confined[thread] = kind
    return True


def confined_kind(thread: threading.Thread | None = None) -> str | None:
    """The kind ``thread`` (default: the calling thread) confined itself as, or None."""
    with _lock:
        return _confined.get(thread if thread is not None else threading.current_thread())


def unconfined_threads() -> list[str]:
    """The names of this process's live threads without a filter yet; empty when it does not confine.

    The guest may run only when this is empty (:meth:`firelet.vstate.vmm.Vmm.confine_and_release`).
    """
    if _active is None:
        return []
    with _lock:
        return sorted(t.name for t in threading.enumerate() if t not in _confined)
