"""virtio-net on vhost-net: what firelet hands the kernel, and what it refuses to hand it.

This machine's kernel has no vhost-net (the rig's has: tests/integration/test_net.py runs
a guest on it), so here the ioctls are recorded instead of made: the device, its
transport, guest memory and the event loop are the real ones, and each test reads the
exact bytes the kernel would get (linux/vhost_types.h layouts). The TAP is a socketpair
(net_driver.PairTap), its two ioctls recorded.
"""

from __future__ import annotations

import errno
import os
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest

from firelet.devices.interrupt import CountingInterrupt
from firelet.devices.virtio import mmio
from firelet.devices.virtio.device import VIRTIO_F_VERSION_1
from firelet.devices.virtio.net import NetError
from firelet.devices.virtio.net import vhost as vh
from firelet.devices.virtio.net.frames import VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_MRG_RXBUF
from firelet.devices.virtio.net.tap import TUN_F_CSUM, TUN_F_TSO4
from firelet.devices.virtio.queue import VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC
from firelet.events.loop import EventLoop
from firelet.kvm.ioctls import _IO, _IOR, _IOW
from firelet.memory.guest import GuestMemoryError

from net_driver import GUEST_MAC, MEM, RX_DATA, TX_DATA, PairTap
from virtio_utils import DriverQueue, mmio_device_features, mmio_init, mmio_read32, mmio_write32, new_memory

RX_RING, TX_RING = 0x10000, 0x20000
#: What the rig's 6.1 vhost-net reports (VHOST_NET_FEATURES): the ring features, mergeable
#: buffers, VERSION_1, ACCESS_PLATFORM, NOTIFY_ON_EMPTY, ANY_LAYOUT/VHOST_NET_F_VIRTIO_NET_HDR, LOG_ALL.
KERNEL_FEATURES = (1 << 24 | 1 << 26 | 1 << 27 | 1 << VIRTIO_RING_F_INDIRECT_DESC | 1 << VIRTIO_RING_F_EVENT_IDX
                   | 1 << VIRTIO_NET_F_MRG_RXBUF | 1 << VIRTIO_F_VERSION_1 | 1 << 33)


class FakeKernel:
    """Records each vhost ioctl (name, argument bytes); answers VHOST_GET_FEATURES."""

    def __init__(self, features: int = KERNEL_FEATURES, fail: dict[int, int] | None = None) -> None:
        self.features = features
        self.fail = fail or {}
        self.calls: list[tuple[str, bytes]] = []
        self.names = {v: k for k, v in vh.VHOST_IOCTLS.items()}

    def __call__(self, fd: int, request: int, arg: Any) -> None:
        if request in self.fail:
            raise OSError(self.fail[request], os.strerror(self.fail[request]))
        if request == vh.VHOST_GET_FEATURES:
            arg[:] = self.features.to_bytes(8, "little")
        self.calls.append((self.names[request], bytes(arg) if not isinstance(arg, int) else b""))

    def of(self, name: str) -> list[bytes]:
        return [arg for called, arg in self.calls if called == name]


class Rig:
    """A VhostNet behind its transport, a driver's two queues, the kick eventfds a VM would give it."""

    def __init__(self, kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> None:
        monkeypatch.setattr(vh, "_ioctl", kernel)
        self.kernel = kernel
        self.mem = new_memory(MEM)
        self.loop = EventLoop()
        self.tap = PairTap()
        self.vhost = vh.Vhost(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        self.net = vh.VhostNet("eth0", self.tap, self.vhost, self.loop, guest_mac=GUEST_MAC, **kwargs)
        self.kicks = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(2)]
        self.net.take_queue_eventfds(self.kicks)
        self.irq = CountingInterrupt()
        self.transport = mmio.MmioTransport(self.mem, self.net, self.irq)
        self.rxq = DriverQueue(self.mem, size=256, base=RX_RING, data_start=RX_DATA)
        self.txq = DriverQueue(self.mem, size=256, base=TX_RING, data_start=TX_DATA)

    def offered(self) -> int:
        return mmio_device_features(self.transport)

    def close(self) -> None:
        self.net.close()
        for fd in self.kicks:
            os.close(fd)
        self.loop.close()
        self.mem.close()


@pytest.fixture
def rig(monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    r = Rig(FakeKernel(), monkeypatch)
    yield r
    r.close()


def test_the_ioctl_numbers_are_linux_vhost_h() -> None:
    u64 = 8
    assert _IOR(0xAF, 0x00, u64) == vh.VHOST_GET_FEATURES
    assert _IOW(0xAF, 0x00, u64) == vh.VHOST_SET_FEATURES
    assert _IO(0xAF, 0x01) == vh.VHOST_SET_OWNER
    assert _IOW(0xAF, 0x03, 8) == vh.VHOST_SET_MEM_TABLE  # struct vhost_memory's header
    assert _IOW(0xAF, 0x10, 8) == vh.VHOST_SET_VRING_NUM  # struct vhost_vring_state
    assert _IOW(0xAF, 0x11, 40) == vh.VHOST_SET_VRING_ADDR  # struct vhost_vring_addr
    assert _IOW(0xAF, 0x12, 8) == vh.VHOST_SET_VRING_BASE
    assert _IOW(0xAF, 0x20, 8) == vh.VHOST_SET_VRING_KICK  # struct vhost_vring_file
    assert _IOW(0xAF, 0x21, 8) == vh.VHOST_SET_VRING_CALL
    assert _IOW(0xAF, 0x30, 8) == vh.VHOST_NET_SET_BACKEND


def test_offers_the_taps_offloads_and_only_the_ring_features_the_kernel_has(monkeypatch: pytest.MonkeyPatch) -> None:
    full = Rig(FakeKernel(), monkeypatch)
    bare = Rig(FakeKernel(KERNEL_FEATURES & ~(1 << VIRTIO_RING_F_EVENT_IDX | 1 << VIRTIO_NET_F_MRG_RXBUF)),
               monkeypatch)
    try:
        for bit in (VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_F_VERSION_1, VIRTIO_RING_F_INDIRECT_DESC):
            assert full.offered() >> bit & 1 and bare.offered() >> bit & 1
        assert full.offered() >> VIRTIO_RING_F_EVENT_IDX & 1 and full.offered() >> VIRTIO_NET_F_MRG_RXBUF & 1
        assert not bare.offered() >> VIRTIO_RING_F_EVENT_IDX & 1 and not bare.offered() >> VIRTIO_NET_F_MRG_RXBUF & 1
        assert not full.offered() >> 33 & 1  # ACCESS_PLATFORM is the kernel's, never offered to the guest
    finally:
        full.close()
        bare.close()


def test_driver_ok_hands_the_kernel_every_ring_at_its_host_address_then_the_tap(rig: Rig) -> None:
    status = mmio_init(rig.transport, [rig.rxq, rig.txq])
    assert status & mmio.STATUS_DRIVER_OK and not status & mmio.STATUS_DEVICE_NEEDS_RESET
    k = rig.kernel
    assert rig.tap.vnet_hdr_size == 12 and rig.tap.offload is not None
    assert rig.tap.offload & (TUN_F_CSUM | TUN_F_TSO4) == TUN_F_CSUM | TUN_F_TSO4
    acked = int.from_bytes(k.of("VHOST_SET_FEATURES")[0], "little")
    assert acked == rig.net.acked_features & KERNEL_FEATURES and acked >> VIRTIO_F_VERSION_1 & 1
    assert not acked >> VIRTIO_NET_F_GUEST_CSUM & 1  # the TAP does the offloads; vhost would refuse the bit
    (table,) = k.of("VHOST_SET_MEM_TABLE")
    count, _ = struct.unpack_from("=II", table)
    regions = [struct.unpack_from("=QQQQ", table, 8 + 32 * i) for i in range(count)]
    assert regions == [(r.guest_addr, r.size, r.host_addr, 0) for r in rig.mem.regions]
    for index, drv in enumerate((rig.rxq, rig.txq)):
        assert struct.unpack("=II", k.of("VHOST_SET_VRING_NUM")[index]) == (index, drv.size)
        assert struct.unpack("=II", k.of("VHOST_SET_VRING_BASE")[index]) == (index, 0)
        assert struct.unpack("=IIQQQQ", k.of("VHOST_SET_VRING_ADDR")[index]) == (
            index, 0, rig.mem.host_address(drv.desc_addr, 16 * drv.size),
            rig.mem.host_address(drv.used_addr, 1), rig.mem.host_address(drv.avail_addr, 1), 0)
        assert struct.unpack("=Ii", k.of("VHOST_SET_VRING_KICK")[index]) == (index, rig.kicks[index])
        assert struct.unpack("=Ii", k.of("VHOST_NET_SET_BACKEND")[index]) == (index, rig.tap.fd)
    calls = [struct.unpack("=Ii", arg)[1] for arg in k.of("VHOST_SET_VRING_CALL")]
    assert len(set(calls)) == 2 and rig.kicks[0] not in calls
    assert [name for name, _ in k.calls][-2:] == ["VHOST_NET_SET_BACKEND"] * 2  # the TAP last, rings all set
    assert rig.net.metrics.activate_fails == 0


def test_a_ring_outside_guest_ram_never_reaches_the_kernel(rig: Rig) -> None:
    """A hostile driver's ring past the end of RAM: the transport refuses DRIVER_OK; vhost gets no ring."""
    rig.txq.desc_addr = MEM - 16  # its table runs past the end of RAM
    status = mmio_init(rig.transport, [rig.rxq, rig.txq])
    assert status & mmio.STATUS_DEVICE_NEEDS_RESET
    assert not rig.kernel.of("VHOST_SET_VRING_ADDR") and not rig.kernel.of("VHOST_NET_SET_BACKEND")


def test_the_device_checks_ring_addresses_itself_too(rig: Rig) -> None:
    """Should a ring ever reach activation unchecked, its host address is computed only inside RAM."""
    from firelet.devices.virtio.queue import Queue

    queue = Queue(256)
    queue.size, queue.desc_table, queue.avail_ring, queue.used_ring = 256, MEM - 16, 0x1000, 0x3000
    with pytest.raises(GuestMemoryError):
        rig.vhost.set_vring(1, queue, rig.mem, rig.kicks[1], rig.kicks[0])
    assert not rig.kernel.of("VHOST_SET_VRING_ADDR")


def test_a_kernel_refusal_fails_only_this_device(monkeypatch: pytest.MonkeyPatch) -> None:
    r = Rig(FakeKernel(fail={vh.VHOST_SET_VRING_ADDR: errno.EINVAL}), monkeypatch)
    try:
        status = mmio_init(r.transport, [r.rxq, r.txq])
        assert status & mmio.STATUS_DRIVER_OK
        assert r.net.metrics.activate_fails == 1 and not r.kernel.of("VHOST_NET_SET_BACKEND")
    finally:
        r.close()


def test_reset_detaches_the_tap_and_a_new_driver_gets_fresh_rings(rig: Rig) -> None:
    mmio_init(rig.transport, [rig.rxq, rig.txq])
    mmio_write32(rig.transport, mmio.STATUS, 0)  # the driver resets the device
    stops = [struct.unpack("=Ii", a) for a in rig.kernel.of("VHOST_NET_SET_BACKEND")[2:]]
    assert stops == [(0, -1), (1, -1)]
    rig.kernel.calls.clear()
    mmio_init(rig.transport, [rig.rxq, rig.txq])
    assert [struct.unpack("=Ii", a)[1] for a in rig.kernel.of("VHOST_NET_SET_BACKEND")] == [rig.tap.fd] * 2


def test_the_kernels_used_buffer_signal_becomes_interrupt_status_and_an_edge(rig: Rig) -> None:
    mmio_init(rig.transport, [rig.rxq, rig.txq])
    call_fd = struct.unpack("=Ii", rig.kernel.of("VHOST_SET_VRING_CALL")[1])[1]
    before = rig.irq.count
    os.eventfd_write(call_fd, 1)  # what vhost does when it used a buffer
    rig.loop.start("vhost-test-loop")
    try:
        deadline = time.monotonic() + 10
        while rig.irq.count == before and time.monotonic() < deadline:
            time.sleep(0.02)
        assert rig.irq.count == before + 1
        assert mmio_read32(rig.transport, mmio.INTERRUPT_STATUS) & 1  # "used buffer", as the driver will read it
    finally:
        rig.loop.stop()
        assert rig.loop.thread is not None
        rig.loop.thread.join(timeout=30)


def test_no_rate_limiters_on_vhost(rig: Rig) -> None:
    with pytest.raises(ValueError, match="no rate limiters"):
        rig.net.update_rate_limiters(None, None)


def test_close_is_idempotent_and_releases_the_tap_and_vhost(rig: Rig) -> None:
    mmio_init(rig.transport, [rig.rxq, rig.txq])
    rig.net.close()
    rig.net.close()
    assert rig.tap.fd == -1 and rig.vhost.fd == -1


def test_no_vhost_on_the_host_is_one_line_saying_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setattr(vh, "VHOST_DEVICE", str(tmp_path / "vhost-net"))
    with pytest.raises(NetError) as info:
        vh.Vhost.open()
    message = str(info.value)
    assert "modprobe vhost_net" in message and '"vhost"' in message and "\n" not in message
