"""One module per device kind: its :class:`~firelet.builder.spec.DeviceSpec` (plan, place, make).

The registration table that puts them in order is :mod:`firelet.builder.registry`.
"""
