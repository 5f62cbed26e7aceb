"""``PUT /cpu-config``: a custom CPU template (pre-boot only).

An empty template changes nothing and is accepted; any modifier is refused,
as firelet cannot apply CPU templates yet.
"""

from __future__ import annotations

from firelet.api.context import ApiContext, not_supported
from firelet.api.routing import RouteTable, no_content
from firelet.api.server import Request, Response
from firelet.config import model as cfg

routes = RouteTable()


@routes.route("PUT", "/cpu-config", "cpu_cfg")
def put_cpu_config(api: ApiContext, req: Request, _: str) -> Response:
    cpu = api.body(req, cfg.CpuConfig)
    api.preboot()
    if any((cpu.kvm_capabilities, cpu.cpuid_modifiers, cpu.msr_modifiers, cpu.reg_modifiers, cpu.vcpu_features)):
        raise not_supported("custom CPU templates are")
    api.update(cpu_config=None)  # nothing to apply: the VM's CPU is the host's, as without a template
    return no_content()
