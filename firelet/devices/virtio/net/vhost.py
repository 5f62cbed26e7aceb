"""The kernel's vhost-net as an interface's data path (opt-in: ``"vhost": true``).

Frames move between the TAP and the driver's rings inside the host kernel; the
VMM only sets the rings up when the driver is ready and forwards interrupts.
Kicks never reach Python: the transport's QueueNotify ioeventfds are handed to
vhost (VHOST_SET_VRING_KICK). Interrupts pass through the event loop: vhost
signals an eventfd per queue when it used buffers, and since a virtio-mmio driver
reads InterruptStatus to learn why its line was raised (virtio 1.2 §4.2.2, the
register table), the loop sets that bit through the transport and raises the line.

What userspace never sees it cannot count or limit: an interface on vhost has no
rate limiters (its config refuses them) and its frame counters stay at zero.
Firecracker has no such path; this one is firelet's. Reference: linux/vhost.h and
linux/vhost_types.h (the ioctls and structures below).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import threading
from collections.abc import Sequence
from typing import NoReturn

from firelet.devices.protocols import Readiness
from firelet.devices.virtio.device import VIRTIO_F_VERSION_1, InterruptSignal
from firelet.devices.virtio.net.device import FEATURES
from firelet.devices.virtio.net.frames import VIRTIO_NET_F_MRG_RXBUF
from firelet.devices.virtio.net.interface import NetInterface
from firelet.devices.virtio.net.tap import NetError, Tap
from firelet.devices.virtio.queue import (
    VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
    Queue,
    avail_ring_size,
    used_ring_size,
)
from firelet.log import get_logger
from firelet.memory.guest import GuestMemory, GuestMemoryError
from firelet.records import RecordError

log = get_logger(__name__)

VHOST_DEVICE = "/dev/vhost-net"
# linux/vhost.h: ioctl type VHOST_VIRTIO (0xAF); each number is _IOC(dir, 0xAF, nr, size).
VHOST_GET_FEATURES = 0x8008AF00  # _IOR(0xAF, 0x00, __u64)
VHOST_SET_FEATURES = 0x4008AF00  # _IOW(0xAF, 0x00, __u64)
VHOST_SET_OWNER = 0x0000AF01  # _IO(0xAF, 0x01)
VHOST_SET_MEM_TABLE = 0x4008AF03  # _IOW(0xAF, 0x03, struct vhost_memory), its 8-byte header
VHOST_SET_VRING_NUM = 0x4008AF10  # _IOW(0xAF, 0x10, struct vhost_vring_state)
VHOST_SET_VRING_ADDR = 0x4028AF11  # _IOW(0xAF, 0x11, struct vhost_vring_addr)
VHOST_SET_VRING_BASE = 0x4008AF12  # _IOW(0xAF, 0x12, struct vhost_vring_state)
VHOST_SET_VRING_KICK = 0x4008AF20  # _IOW(0xAF, 0x20, struct vhost_vring_file)
VHOST_SET_VRING_CALL = 0x4008AF21  # _IOW(0xAF, 0x21, struct vhost_vring_file)
VHOST_NET_SET_BACKEND = 0x4008AF30  # _IOW(0xAF, 0x30, struct vhost_vring_file)
#: The ioctls, for the seccomp policy and for messages.
VHOST_IOCTLS = {
    "VHOST_GET_FEATURES": VHOST_GET_FEATURES, "VHOST_SET_FEATURES": VHOST_SET_FEATURES,
    "VHOST_SET_OWNER": VHOST_SET_OWNER, "VHOST_SET_MEM_TABLE": VHOST_SET_MEM_TABLE,
    "VHOST_SET_VRING_NUM": VHOST_SET_VRING_NUM, "VHOST_SET_VRING_ADDR": VHOST_SET_VRING_ADDR,
    "VHOST_SET_VRING_BASE": VHOST_SET_VRING_BASE, "VHOST_SET_VRING_KICK": VHOST_SET_VRING_KICK,
    "VHOST_SET_VRING_CALL": VHOST_SET_VRING_CALL, "VHOST_NET_SET_BACKEND": VHOST_NET_SET_BACKEND,
}
# struct vhost_memory {u32 nregions; u32 padding;} then regions {u64 guest_phys_addr, memory_size,
# userspace_addr, flags_padding}; vhost_vring_state {u32 index, num}; vhost_vring_file {u32 index;
# s32 fd} (fd -1: none); vhost_vring_addr {u32 index, flags; u64 desc, used, avail, log} (that order).
_MEMORY = struct.Struct("=II")
_REGION = struct.Struct("=QQQQ")
_STATE = struct.Struct("=II")
_FILE = struct.Struct("=Ii")
_ADDR = struct.Struct("=IIQQQQ")
#: Descriptor table bytes per entry (virtio 1.2 §2.7.5).
DESC_SIZE = 16
#: Features the ring code in the kernel may take on (vhost.h VHOST_FEATURES, vhost_net's additions).
RING_FEATURES = (1 << VIRTIO_RING_F_EVENT_IDX | 1 << VIRTIO_RING_F_INDIRECT_DESC | 1 << VIRTIO_NET_F_MRG_RXBUF
                 | 1 << VIRTIO_F_VERSION_1)
EPOLLIN = 0x001


class Vhost:
    """An open ``/dev/vhost-net`` owned by this process: the kernel's end of the rings."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.features = self._get_features()

    @classmethod
    def open(cls) -> Vhost:
        """Open and own a vhost-net instance; NetError saying what to do when the host has none."""
        fd = open_device()
        try:
            _ioctl(fd, VHOST_SET_OWNER, 0)
            vhost = cls(fd)
        except OSError as exc:
            os.close(fd)
            raise NetError(f"vhost-net refused this process: {exc.strerror}") from None
        if not vhost.features >> VIRTIO_F_VERSION_1 & 1:
            vhost.close()
            raise NetError("this kernel's vhost-net lacks VIRTIO_F_VERSION_1; drop \"vhost\" from the interface")
        return vhost

    def _get_features(self) -> int:
        buf = bytearray(8)
        _ioctl(self.fd, VHOST_GET_FEATURES, buf)
        return int.from_bytes(buf, "little")

    def set_features(self, features: int) -> None:
        _ioctl(self.fd, VHOST_SET_FEATURES, features.to_bytes(8, "little"))

    def set_mem_table(self, mem: GuestMemory) -> None:
        """Tell vhost where guest RAM lives in this process, so it can follow the driver's addresses."""
        table = bytearray(_MEMORY.pack(len(mem.regions), 0))
        for region in mem.regions:
            table += _REGION.pack(region.guest_addr, region.size, region.host_addr, 0)
        _ioctl(self.fd, VHOST_SET_MEM_TABLE, bytes(table))

    def set_vring(self, index: int, queue: Queue, mem: GuestMemory, kick_fd: int, call_fd: int) -> None:
        """Hand queue ``index`` over: size, next index, ring addresses (checked against RAM), eventfds."""
        size = queue.size
        desc = mem.host_address(queue.desc_table, DESC_SIZE * size)
        avail = mem.host_address(queue.avail_ring, avail_ring_size(size))
        used = mem.host_address(queue.used_ring, used_ring_size(size))
        _ioctl(self.fd, VHOST_SET_VRING_NUM, _STATE.pack(index, size))
        _ioctl(self.fd, VHOST_SET_VRING_BASE, _STATE.pack(index, queue.next_avail))
        _ioctl(self.fd, VHOST_SET_VRING_ADDR, _ADDR.pack(index, 0, desc, used, avail, 0))
        _ioctl(self.fd, VHOST_SET_VRING_KICK, _FILE.pack(index, kick_fd))
        _ioctl(self.fd, VHOST_SET_VRING_CALL, _FILE.pack(index, call_fd))

    def set_backend(self, index: int, fd: int) -> None:
        """Start queue ``index`` on the TAP ``fd``, or stop it (-1)."""
        _ioctl(self.fd, VHOST_NET_SET_BACKEND, _FILE.pack(index, fd))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_device() -> int:
    """An fd of ``/dev/vhost-net``, or NetError saying what to do (load the module, or drop ``vhost``)."""
    try:
        return os.open(VHOST_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        hint = ("load the vhost_net module (`modprobe vhost_net`)" if exc.errno == errno.ENOENT
                else "run with access to it")
        raise NetError(f"vhost-net is not available: cannot open {VHOST_DEVICE}: {exc.strerror}; {hint}, "
                       "or drop \"vhost\" from the interface") from None


def _ioctl(fd: int, request: int, arg: int | bytes | bytearray) -> None:
    fcntl.ioctl(fd, request, arg)


class VhostNet(NetInterface):
    """A virtio network device whose frames vhost-net moves; call :meth:`close` when the VM ends.

    Threads: the transport calls ``activate``/``reset`` from a vCPU; the loop runs the
    interrupt forwarding. One lock orders them.
    """

    def __init__(self, iface_id: str, tap: Tap, vhost: Vhost, loop: Readiness, *,
                 guest_mac: bytes | None = None) -> None:
        ring = vhost.features & RING_FEATURES
        super().__init__(iface_id, tap, loop, FEATURES & ~RING_FEATURES | ring, guest_mac)
        self.vhost = vhost
        self._lock = threading.Lock()
        self._kicks: list[int] = []
        self._calls = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in self.queue_max_sizes]
        self._closed = False
        self._running = False
        for fd in self._calls:
            loop.add(fd, EPOLLIN, self._used)

    def take_queue_eventfds(self, fds: Sequence[int]) -> None:
        """The transport's notification eventfds, one per queue: vhost waits on them, not the loop."""
        self._kicks = list(fds)

    def process_queue(self, index: int) -> None:
        """Kicks go to vhost; one that reaches the transport anyway needs nothing from us."""

    def activate(self, mem: GuestMemory, queues: Sequence[Queue], interrupt: InterruptSignal) -> None:
        with self._lock:
            super().activate(mem, queues, interrupt)
            if self._closed or not self.prepare_tap():
                return
            try:
                if len(self._kicks) != len(queues):
                    raise OSError(errno.EINVAL, "the transport gave no notification eventfds")
                self.vhost.set_features(self.acked_features & self.vhost.features)
                self.vhost.set_mem_table(mem)
                for index, queue in enumerate(queues):
                    self.vhost.set_vring(index, queue, mem, self._kicks[index], self._calls[index])
                for index in range(len(queues)):
                    self.vhost.set_backend(index, self.tap.fd)
                self._running = True
            except (OSError, GuestMemoryError) as exc:
                self.metrics.activate_fails += 1
                self._stop()
                log.warning("virtio-net %s: vhost-net refused the driver's queues: %s", self.iface_id,
                            getattr(exc, "strerror", None) or exc)

    def reset(self) -> None:
        with self._lock:
            self._stop()
            super().reset()

    def _stop(self) -> None:
        """Detach vhost from the TAP so the rings can be set again (lock held)."""
        if not self._running or self.vhost.fd < 0:
            return
        self._running = False
        for index in range(len(self.queue_max_sizes)):
            try:
                self.vhost.set_backend(index, -1)
            except OSError as exc:
                log.warning("virtio-net %s: cannot stop vhost queue %d: %s", self.iface_id, index, exc.strerror)

    def _used(self, events: int) -> None:
        """vhost used buffers on some queue: say so in InterruptStatus and raise the line (loop thread)."""
        for fd in self._calls:
            try:
                os.eventfd_read(fd)
            except (BlockingIOError, OSError):
                continue
        with self._lock:
            interrupt = self.interrupt if self._running else None
        if interrupt is not None:
            interrupt.signal_used_queue()

    def close(self) -> None:
        """Close vhost (which stops its rings), the TAP, and the interrupt forwarding (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._running = False  # closing vhost's fd stops its rings; the releasing thread may make no ioctl
            self.vhost.close()
            self.tap.close()
            calls, self._calls = self._calls, []

        def finish() -> None:
            for fd in calls:
                self._loop.remove(fd)  # before the close: the loop must not see a reused number
                os.close(fd)

        self._on_loop(finish)

    def save_state(self) -> NoReturn:
        raise RecordError(f"network interface {self.iface_id} runs on vhost-net, whose ring positions are in "
                          "the kernel: snapshots of it are not supported")

