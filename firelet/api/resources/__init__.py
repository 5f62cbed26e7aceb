"""One module per family of Firecracker endpoints; each exports ``routes``, a :class:`RouteTable`.

:class:`firelet.api.routes.Api` lists them in one place and merges their tables.
"""
