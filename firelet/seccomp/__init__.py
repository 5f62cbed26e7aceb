"""Seccomp-bpf filters per thread kind: policies in Firecracker's seccompiler JSON, compiled here.

Each VMM thread calls :func:`install` with its kind once, at its start, before the guest's first
instruction; the filter binds that thread only (and threads it creates later). The kinds and
where each thread installs its filter are in docs/seccomp.md; firelet's own policy is
``policy.json`` beside this module. Only the standard library (ctypes when installing): the VMM
imports this at start.
"""

from __future__ import annotations

import os

from firelet.errors import UsageError
from firelet.seccomp.policy import Filter, Policy, SeccompError, load_policy

__all__ = ["DEFAULT_POLICY_PATH", "FALLBACK_KINDS", "REQUIRED_KINDS", "Filter", "Policy", "SeccompError",
           "default_policy", "filter_for", "install", "load_policy", "resolve_policy"]

DEFAULT_POLICY_PATH = os.path.join(os.path.dirname(__file__), "policy.json")
#: The kinds every policy must define: Firecracker's three (its filter files have exactly these).
REQUIRED_KINDS = ("vmm", "api", "vcpu")
#: firelet's other threads, and the kind whose filter they take when a policy lacks theirs.
FALLBACK_KINDS = {"main": "vmm", "metrics": "vmm", "watch": "vmm"}

_default: Policy | None = None


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
