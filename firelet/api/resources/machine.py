"""``/machine-config``: vCPUs and memory (GET any time; PUT and PATCH pre-boot only).

``cpu_template`` is deprecated in Firecracker: it is answered with a
``Deprecation`` header; "None" is the same as leaving it out, any real
template is refused (firelet cannot apply one yet), and so is ``smt``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from firelet.api.context import BAD_BODY, ApiContext, not_supported
from firelet.api.routing import Fault, RouteTable, no_content, ok
from firelet.api.server import Request, Response
from firelet.config import model as cfg

routes = RouteTable()


@routes.route("GET", "/machine-config", "machine_cfg")
def get_machine_config(api: ApiContext, req: Request, _: str) -> Response:
    return ok(api.config.machine_config)


@routes.route("PUT", "/machine-config", "machine_cfg")
def put_machine_config(api: ApiContext, req: Request, _: str) -> Response:
    try:
        machine = api.body(req, cfg.MachineConfig)
    except Fault as exc:
        raise _in_firecrackers_words(exc) from None
    api.preboot()
    _apply(api, "PUT", machine)
    return no_content()


@routes.route("PATCH", "/machine-config", "machine_cfg")
def patch_machine_config(api: ApiContext, req: Request, _: str) -> Response:
    """Merged over the current configuration and checked as a whole, as Firecracker does."""
    patch = api.body(req, dict[str, Any])
    api.preboot()
    merged = {**cfg.to_builtins(api.config.machine_config), **patch}
    try:
        machine = cfg.convert(merged, cfg.MachineConfig)
    except cfg.ConfigError as exc:
        raise _in_firecrackers_words(Fault(f"{BAD_BODY}: {exc}.")) from None
    _apply(api, "PATCH", machine)
    return no_content()


#: Firecracker's ``VmConfigError`` texts for values it decodes and then finds out of range.
_VCPUS_INVALID = ("Machine config error: The vCPU number is invalid! The vCPU number can only be 1 or an even "
                  "number when SMT is enabled.")
_MEMORY_INVALID = "Machine config error: The memory size (MiB) is invalid."


def _in_firecrackers_words(fault: Fault) -> Fault:
    """A vCPU count or memory size out of range, as Firecracker words it, with firelet's detail after."""
    detail = str(fault).removeprefix(f"{BAD_BODY}: ")
    out_of_range = any(words in detail for words in ("expected int >=", "expected int <=", "expected at least",
                                                     "with smt enabled", "expected a multiple of 2"))
    if detail.startswith("vcpu_count:") and out_of_range:
        return Fault(f"{_VCPUS_INVALID} ({detail.rstrip('.')})")
    if detail.startswith("mem_size_mib:") and out_of_range:
        return Fault(f"{_MEMORY_INVALID} ({detail.rstrip('.')})")
    return fault


def _apply(api: ApiContext, method: str, machine: cfg.MachineConfig) -> None:
    # The stored configuration never holds a template, so one here came with this request.
    if machine.cpu_template is not msgspec.UNSET:
        api.deprecate(f"{method} /machine-config: cpu_template field is deprecated.")
    if machine.cpu_template not in (msgspec.UNSET, "None"):
        raise not_supported("CPU templates (machine-config cpu_template) are")
    if machine.smt:
        raise not_supported("simultaneous multithreading (machine-config smt) is")
    balloon = api.config.balloon
    if balloon is not None and machine.mem_size_mib < balloon.amount_mib:
        raise Fault("Machine config error: The memory size (MiB) is smaller than the previously set balloon "
                    f"device target size ({machine.mem_size_mib} < {balloon.amount_mib} MiB).")
    api.update(machine_config=msgspec.structs.replace(machine, cpu_template=msgspec.UNSET))
