"""``PUT /boot-source``: the kernel, initrd and command line (pre-boot only).

As Firecracker, the kernel and initrd are opened when the request arrives, so
a wrong path is refused here and not at ``InstanceStart``.
"""

from __future__ import annotations

from firelet.api.checks import open_problem
from firelet.api.context import ApiContext
from firelet.api.routing import Fault, RouteTable, no_content
from firelet.api.server import Request, Response
from firelet.config import model as cfg

routes = RouteTable()


@routes.route("PUT", "/boot-source", "boot_source")
def put_boot_source(api: ApiContext, req: Request, _: str) -> Response:
    boot = api.body(req, cfg.BootSource)
    api.preboot()
    problem = open_problem(boot.kernel_image_path)
    if problem:
        raise Fault(f"Boot source error: The kernel file cannot be opened: {problem} "
                    f"(kernel_image_path {boot.kernel_image_path}).")
    if boot.initrd_path is not None:
        problem = open_problem(boot.initrd_path)
        if problem:
            raise Fault("Boot source error: The initrd file cannot be opened due to invalid path or invalid "
                        f"permissions. {problem} (initrd_path {boot.initrd_path}).")
    api.update(boot_source=boot)
    return no_content()
