"""The names of the VMM's threads, one per kind, defined once.

Where Firecracker has the thread, firelet uses Firecracker's name (``fc_vmm`` for
the event loop, ``fc_api`` for the API server, ``fc_vcpu N`` for vCPUs), so tools
and people that know Firecracker find their way. firelet's own helper threads are
``fc_<kind>``. Seccomp filters and diagnostics key on the kind (:func:`kind_of`).
Every name fits Linux's 15-byte thread name (``prctl(PR_SET_NAME)``).
"""

from __future__ import annotations

#: The event loop that serves every device (Firecracker's VMM thread).
VMM = "fc_vmm"
#: The HTTP API server on the Unix socket.
API = "fc_api"
#: One per vCPU, named ``fc_vcpu N`` by :func:`vcpu`.
VCPU = "fc_vcpu"
#: firelet's own helpers: the kernel/initrd reader during a build,
LOADER = "fc_loader"
#: the KVM calls that wait out grace periods during a build (firelet.builder.kernel_waits),
KVM_SETUP = "fc_kvm_setup"
#: the periodic metrics writer (firelet.metrics.MetricsWriter),
METRICS = "fc_metrics"
#: and the thread that waits for the VM's end for the API (firelet.controller).
WATCH = "fc_watch"

KINDS = (VMM, API, VCPU, LOADER, KVM_SETUP, METRICS, WATCH)


def vcpu(index: int) -> str:
    """The name of vCPU ``index``'s thread (Firecracker's ``fc_vcpu 0``, ``fc_vcpu 1``, ...)."""
    return f"{VCPU} {index}"


def kind_of(name: str) -> str | None:
    """The kind of a thread named ``name`` (one of :data:`KINDS`), or None for a thread not ours."""
    kind = name.split(" ", 1)[0]
    return kind if kind in KINDS else None
