"""A test virtio-net driver: the device behind virtio-mmio, two driver queues in real guest memory.

Posts receive buffers and transmit frames as Linux's virtio_net would (one
header of 12 bytes, VERSION_1), and reads frames back from the used ring,
joining merged buffers by the header's num_buffers.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from firelet.devices.interrupt import CountingInterrupt
from firelet.devices.virtio import mmio
from firelet.devices.virtio.net import Net, Tap
from firelet.devices.virtio.net.frames import VNET_HDR_LEN
from firelet.events.loop import EventLoop

from virtio_utils import DriverQueue, mmio_init, new_memory

MEM = 32 << 20
RX_RING, TX_RING = 0x10000, 0x20000
RX_DATA, TX_DATA = 0x100000, 0x1000000
GUEST_MAC = bytes.fromhex("06000c000201")


class NetDriver:
    """One Net device, its transport and the driver's view; the loop runs only after :meth:`start`."""

    def __init__(self, tap: Tap, *, features: int | None = None, size: int = 256, **kwargs: Any) -> None:
        self.mem = new_memory(MEM)
        self.loop = EventLoop()
        kwargs.setdefault("guest_mac", GUEST_MAC)
        self.net = Net("eth0", tap, self.loop, **kwargs)
        self.irq = CountingInterrupt()
        self.transport = mmio.MmioTransport(self.mem, self.net, self.irq)
        self.rxq = DriverQueue(self.mem, size=size, base=RX_RING, data_start=RX_DATA)
        self.txq = DriverQueue(self.mem, size=size, base=TX_RING, data_start=TX_DATA)
        status = mmio_init(self.transport, [self.rxq, self.txq], features)
        assert status & mmio.STATUS_DRIVER_OK and not status & mmio.STATUS_DEVICE_NEEDS_RESET
        self.rx_bufs: dict[int, int] = {}  # head -> buffer address
        self.running = False

    # -- threads ------------------------------------------------------------------------
    def start(self) -> None:
        self.loop.start("net-test-loop")
        self.running = True

    def on_loop(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` where the VMM would (the loop thread once it runs)."""
        return self.loop.submit(fn).result(timeout=30) if self.running else fn()

    def notify(self, index: int) -> None:
        self.on_loop(lambda: self.transport.notify(index))

    def close(self) -> None:
        if self.running:
            self.loop.stop()
            assert self.loop.thread is not None
            self.loop.thread.join(timeout=30)
        self.net.close()
        self.loop.close()
        self.mem.close()

    # -- receive ----------------------------------------------------------------------------
    def post_rx(self, count: int, size: int, notify: bool = True) -> None:
        for _ in range(count):
            addr = self.rxq.alloc(size)
            head = self.rxq.add_chain([(addr, size, True)])
            self.rx_bufs[head] = addr
        if notify:
            self.notify(0)

    def frames(self) -> list[tuple[bytes, int, bytes]]:
        """(header, buffers used, frame) of every frame the device delivered since the last call."""
        out: list[tuple[bytes, int, bytes]] = []
        used = self.rxq.take_used()
        i = 0
        while i < len(used):
            head, length = used[i]
            data = self.mem.read(self.rx_bufs[head], length)
            header = data[:VNET_HDR_LEN]
            count = struct.unpack_from("<H", header, 10)[0] if length >= VNET_HDR_LEN else 1
            for extra_head, extra_len in used[i + 1 : i + count]:
                data += self.mem.read(self.rx_bufs[extra_head], extra_len)
            out.append((header, count, data[VNET_HDR_LEN:]))
            i += max(count, 1)
        return out

    # -- transmit -------------------------------------------------------------------------------
    def send(self, frame: bytes, header: bytes = bytes(VNET_HDR_LEN), notify: bool = True) -> int:
        data = header + frame
        addr = self.txq.alloc(len(data), data)
        head = self.txq.add_chain([(addr, len(data), False)])
        if notify:
            self.notify(1)
        return head


class PairTap(Tap):
    """One end of a SOCK_SEQPACKET pair as the TAP; the header size and offloads are recorded."""

    def __init__(self) -> None:
        ours, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        self.peer.settimeout(20)
        super().__init__(ours.detach(), "pair0")
        self.vnet_hdr_size: int | None = None
        self.offload: int | None = None

    def set_vnet_hdr_size(self, n: int) -> None:
        self.vnet_hdr_size = n

    def set_offload(self, flags: int) -> None:
        self.offload = flags

    def inject(self, frame: bytes, header: bytes = bytes(VNET_HDR_LEN)) -> None:
        self.peer.send(header + frame)

    def take(self) -> bytes:
        return self.peer.recv(1 << 17)

    def pending(self) -> list[bytes]:
        out = []
        self.peer.setblocking(False)
        try:
            while True:
                out.append(self.peer.recv(1 << 17))
        except BlockingIOError:
            pass
        finally:
            self.peer.settimeout(20)
        return out

    def close(self) -> None:
        super().close()
        self.peer.close()


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def exchange(drv: NetDriver, frame: bytes, wanted: Callable[[bytes], bool], timeout: float = 20.0,
             ) -> tuple[bytes, int, bytes]:
    """Send ``frame`` through TX (again each second, as a real stack does) until RX brings a wanted frame."""
    deadline = time.monotonic() + timeout
    next_send = 0.0
    while time.monotonic() < deadline:
        if time.monotonic() >= next_send:
            drv.send(frame)
            next_send = time.monotonic() + 1.0
        for header, count, got in drv.on_loop(drv.frames):
            if wanted(got):
                return header, count, got
        time.sleep(0.005)
    raise AssertionError(f"no wanted frame within {timeout} s")
