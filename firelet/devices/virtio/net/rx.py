"""Putting one received frame into the driver's receive chains (virtio 1.2 §5.1.6.3, §5.1.6.4)."""

from __future__ import annotations

from typing import NamedTuple

from firelet.devices.virtio.net.frames import NUM_BUFFERS_OFFSET
from firelet.devices.virtio.queue import DescriptorChain, Queue
from firelet.memory.guest import GuestMemory


class Delivery(NamedTuple):
    """What became of a frame: the chains returned to the driver, and why it was dropped (None: delivered)."""

    chains: int
    dropped: str | None = None


def deliver(mem: GuestMemory, queue: Queue, frame: memoryview, mergeable: bool) -> Delivery | None:
    """Copy ``frame`` (header first, writable) into the driver's buffers; None: not enough buffers yet.

    Without VIRTIO_NET_F_MRG_RXBUF the frame takes one chain; with it as many as it
    needs, their count in the header's num_buffers (1 otherwise, §5.1.6.4). Nothing is
    written and every chain popped is given back (next_avail rewound) when the ring runs
    out first, so the caller keeps the frame for later. A frame that cannot fit (one
    chain too small, a bad chain, or the whole ring too small) is dropped: every chain
    taken for it goes back with length 0.
    """
    total = len(frame)
    start = queue.next_avail
    chains: list[tuple[int, list[memoryview]]] = []
    heads: list[int] = []  # every returnable head popped, for a failure
    room = 0
    failure: str | None = None
    while room < total:
        chain = queue.pop(mem)
        if chain is None:
            if len(heads) >= queue.size:
                failure = f"a {total}-byte frame does not fit the whole ring"
                break
            queue.next_avail = start
            return None
        if chain.head_valid:
            heads.append(chain.head_index)
        found = rx_buffers(mem, chain)
        if isinstance(found, str):
            failure = found
            break
        chains.append((chain.head_index, found[0]))
        room += found[1]
        if not mergeable:
            if room < total:
                failure = f"a {total}-byte frame in a {room}-byte receive chain"
            break
    if failure is not None:
        queue.add_used_many(mem, [(head, 0) for head in heads])
        return Delivery(len(heads), failure)
    frame[NUM_BUFFERS_OFFSET : NUM_BUFFERS_OFFSET + 2] = len(chains).to_bytes(2, "little")
    offset = 0
    used: list[tuple[int, int]] = []
    for head, views in chains:
        written = scatter(frame[offset:], views)
        used.append((head, written))
        offset += written
    queue.add_used_many(mem, used)  # the frame's buffers appear to the driver together
    return Delivery(len(chains))


def rx_buffers(mem: GuestMemory, chain: DescriptorChain) -> tuple[list[memoryview], int] | str:
    """The writable views of a receive chain and their total, or why it is refused.

    A receive chain is device-writable only (§5.1.6.3) and has room for something.
    """
    if chain.error is not None:
        return chain.error.value
    views: list[memoryview] = []
    total = 0
    for desc in chain.descriptors:
        if not desc.write:
            return "a device-readable buffer in a receive chain"
        if desc.len:
            views.append(mem.view(desc.addr, desc.len))
            total += desc.len
    if total == 0:
        return "a receive chain with no room"
    return views, total


def scatter(data: memoryview, views: list[memoryview]) -> int:
    """Copy ``data`` into ``views`` in order as far as they reach; returns bytes copied."""
    copied = 0
    size = len(data)
    for view in views:
        n = min(len(view), size - copied)
        view[:n] = data[copied : copied + n]
        copied += n
        if copied == size:
            break
    return copied
