"""virtio-blk: the device (:mod:`.device`) and request parsing (:mod:`.request`)."""

from firelet.devices.virtio.block.device import Block, BlockError, BlockMetrics

__all__ = ["Block", "BlockError", "BlockMetrics"]
