"""``PUT /entropy``: a virtio-rng device (pre-boot only); firelet has none yet, so it is refused."""

from __future__ import annotations

from firelet.api.context import ApiContext, not_supported
from firelet.api.routing import RouteTable
from firelet.api.server import Request, Response
from firelet.config import model as cfg

routes = RouteTable()


@routes.route("PUT", "/entropy", "entropy")
def put_entropy(api: ApiContext, req: Request, _: str) -> Response:
    api.body(req, cfg.Entropy)
    api.preboot()
    raise not_supported("the entropy device (virtio-rng) is")
