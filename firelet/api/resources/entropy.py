"""``PUT /entropy``: a virtio-rng entropy device (pre-boot only)."""

from __future__ import annotations

from firelet.api.context import ApiContext
from firelet.api.routing import RouteTable, no_content
from firelet.api.server import Request, Response
from firelet.config import model as cfg

routes = RouteTable()


@routes.route("PUT", "/entropy", "entropy")
def put_entropy(api: ApiContext, req: Request, _: str) -> Response:
    api.preboot()
    api.update(entropy=api.body(req, cfg.Entropy))
    return no_content()
