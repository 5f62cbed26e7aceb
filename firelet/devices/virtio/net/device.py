"""virtio-net over a TAP device (virtio 1.2 §5.1), served on the VMM's event loop.

Receive: the TAP's fd is watched for EPOLLIN; each frame (with its virtio-net
header, which the kernel writes) is read into one bounce buffer and copied into
the driver's receive chains. When the driver has no buffers, the fd stops being
watched (the frame read stays pending, the kernel queues or drops the rest) until
the driver notifies the receive queue. Transmit: a notification of the transmit
queue writes each chain (header + frame) to the TAP with one ``writev``.

Both directions pass their rate limiter frame by frame; a throttled direction
stops and one timer wakes it when the limiter will admit the frame. Everything
the driver supplies is checked (:mod:`.frames`); a bad chain fails only its frame.

Threads: the loop calls :meth:`Net.process_queue` (queue ioeventfds), the TAP
callback and the timers; the transport may call ``activate``/``reset`` from a
vCPU, and PATCH arrives on the API's thread. One lock orders them; the loop's
own registrations are made on the loop thread (:meth:`Net._on_loop`).
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Sequence
from functools import partial

from firelet.devices.protocols import Cancellable, Readiness
from firelet.devices.rate_limiter import LimiterConfig, RateLimiter
from firelet.devices.virtio.device import InterruptSignal
from firelet.devices.virtio.net.frames import (
    MAX_BUFFER_LEN,
    VIRTIO_NET_F_CSUM,
    VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO,
    VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_HOST_UFO,
    VIRTIO_NET_F_MRG_RXBUF,
    VNET_HDR_LEN,
    tx_frame,
)
from firelet.devices.virtio.net.interface import RX_QUEUE, TX_QUEUE, NetInterface, NetState
from firelet.devices.virtio.net.rx import deliver
from firelet.devices.virtio.net.tap import Tap
from firelet.devices.virtio.queue import VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, Queue
from firelet.log import get_logger
from firelet.memory.guest import GuestMemory

log = get_logger(__name__)

#: Frames moved per wake-up before other events get their turn (the fd is level-triggered,
#: and a transmit queue with more is continued from the loop's call queue).
BUDGET = 256
EPOLLIN, EPOLLERR, EPOLLHUP = 0x001, 0x008, 0x010
#: What the userspace path offers: every offload, mergeable buffers, both ring features.
FEATURES = (
    1 << VIRTIO_NET_F_CSUM | 1 << VIRTIO_NET_F_GUEST_CSUM | 1 << VIRTIO_NET_F_GUEST_TSO4
    | 1 << VIRTIO_NET_F_GUEST_TSO6 | 1 << VIRTIO_NET_F_GUEST_UFO | 1 << VIRTIO_NET_F_HOST_TSO4
    | 1 << VIRTIO_NET_F_HOST_TSO6 | 1 << VIRTIO_NET_F_HOST_UFO | 1 << VIRTIO_NET_F_MRG_RXBUF
    | 1 << VIRTIO_RING_F_EVENT_IDX | 1 << VIRTIO_RING_F_INDIRECT_DESC
)


class _Wait:
    """Why receiving is stopped (None on the device: it is not)."""

    BUFFERS = "no receive buffers"
    LIMITER = "rate limited"
    DEAD = "the TAP failed"


class Net(NetInterface):
    """A virtio network device whose host end is ``tap``; call :meth:`close` when the VM ends."""

    def __init__(self, iface_id: str, tap: Tap, loop: Readiness, *, guest_mac: bytes | None = None,
                 rx_limiter: RateLimiter | None = None, tx_limiter: RateLimiter | None = None) -> None:
        super().__init__(iface_id, tap, loop, FEATURES, guest_mac)
        self.rx_limiter = rx_limiter if rx_limiter is not None else RateLimiter()
        self.tx_limiter = tx_limiter if tx_limiter is not None else RateLimiter()
        self._lock = threading.RLock()
        self._rx_buf = bytearray(MAX_BUFFER_LEN)
        self._rx_view = memoryview(self._rx_buf)
        self._rx_len = 0  # a frame read from the TAP, not yet delivered
        self._rx_admitted = False  # ... and already paid for at the limiter
        self._rx_wait: str | None = None
        self._tx_throttled = False
        self._timers: dict[int, Cancellable] = {}  # by queue index
        self._generation = 0  # bumped by reset/close: timers of an older one do nothing
        self._registered = False
        self._mask = 0
        self._closed = False

    # -- configuration ------------------------------------------------------------------
    def update_rate_limiters(self, rx: LimiterConfig | None, tx: LimiterConfig | None) -> None:
        """PATCH: new buckets for either direction (None keeps it); a throttled one retries at once."""
        with self._lock:
            if rx is not None:
                self.rx_limiter.update_buckets(rx.bandwidth, rx.ops)
            if tx is not None:
                self.tx_limiter.update_buckets(tx.bandwidth, tx.ops)
            generation = self._generation
        self._loop.call_soon(partial(self._wake, generation, None))  # timers are the loop thread's

    # -- lifecycle ---------------------------------------------------------------------------
    def activate(self, mem: GuestMemory, queues: Sequence[Queue], interrupt: InterruptSignal) -> None:
        with self._lock:
            super().activate(mem, queues, interrupt)
            self.prepare_tap()
            self._rx_wait = None
        self._on_loop(self._sync_loop)

    def reset(self) -> None:
        with self._lock:
            super().reset()
            self._forget()
        self._on_loop(self._sync_loop)

    def close(self) -> None:
        """Stop watching the TAP and close it (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._forget()
            fd, self.tap.fd = self.tap.fd, -1
        if fd < 0:
            return

        def finish() -> None:
            if self._registered:
                self._loop.remove(fd)  # before the close: the loop must not see a reused number
                self._registered = False
            os.close(fd)

        self._on_loop(finish)

    def _forget(self) -> None:
        self._rx_len, self._rx_admitted, self._rx_wait, self._tx_throttled = 0, False, None, False
        self._generation += 1
        self._timers.clear()  # they fire into an old generation and do nothing

    # -- snapshots ------------------------------------------------------------------------------
    def save_state(self) -> NetState:
        with self._lock:
            return super().save_state()

    def restore_state(self, state: NetState) -> None:
        """Take ``state`` over on a device made for the same interface (the transport re-activates it)."""
        self.check_state(state)
        with self._lock:
            self.mac[:] = state.mac
            self.acked_features = state.acked_features

    # -- the event loop's side ---------------------------------------------------------------
    def _sync_loop(self) -> None:
        """Make the loop watch the TAP exactly when receiving is wanted (idempotent)."""
        with self._lock:
            fd = self.tap.fd
            watch = self.activated and not self._closed and fd >= 0 and self._rx_wait is not _Wait.DEAD
            mask = EPOLLIN if watch and self._rx_wait is None else 0
            if watch and not self._registered:
                self._loop.add(fd, mask, self._on_tap)
                self._registered, self._mask = True, mask
            elif not watch and self._registered and fd >= 0:
                self._loop.remove(fd)
                self._registered = False
            elif self._registered and mask != self._mask:
                self._loop.modify(fd, mask)
                self._mask = mask

    def _on_tap(self, events: int) -> None:
        with self._lock:
            self.metrics.rx_tap_event_count += 1
            if events & (EPOLLERR | EPOLLHUP):
                self.metrics.event_fails += 1
                self._stop_rx(_Wait.DEAD)
            else:
                self._receive()
        self._sync_loop()

    def _arm(self, index: int, limiter: RateLimiter) -> None:
        """One timer for when ``limiter`` admits the refused frame (lock held)."""
        if index in self._timers:
            return
        delay_s = max(limiter.wait_ns, 1) / 1e9
        generation = self._generation

        def arm() -> None:
            with self._lock:
                if generation == self._generation and index not in self._timers:
                    self._timers[index] = self._loop.call_later(delay_s, partial(self._wake, generation, index))

        self._on_loop(arm)

    def _wake(self, generation: int, index: int | None) -> None:
        """Queue ``index``'s limiter timer fired, or (None) the buckets changed: retry what was stopped."""
        with self._lock:
            if generation != self._generation:
                return
            if index is None:
                for timer in self._timers.values():
                    timer.cancel()
                self._timers.clear()
            else:
                self._timers.pop(index, None)
            if self._rx_wait is _Wait.LIMITER and index in (None, RX_QUEUE):
                if index is not None:
                    self.metrics.rx_event_rate_limiter_count += 1
                self._rx_wait = None
                self._receive()
            if self._tx_throttled and index in (None, TX_QUEUE):
                if index is not None:
                    self.metrics.tx_rate_limiter_event_count += 1
                self._tx_throttled = False
                self._transmit()
        self._sync_loop()

    # -- the driver's notifications ----------------------------------------------------------
    def process_queue(self, index: int) -> None:
        with self._lock:
            if not self.activated:
                return
            if index == RX_QUEUE:
                self.metrics.rx_queue_event_count += 1
                if self._rx_wait is _Wait.BUFFERS:
                    self._rx_wait = None
                self._receive()
            elif index == TX_QUEUE:
                self.metrics.tx_queue_event_count += 1
                self._transmit(notified=True)
        self._on_loop(self._sync_loop)

    def _stop_rx(self, why: str) -> None:
        if self._rx_wait is None:
            log.debug("virtio-net %s: receive stopped: %s", self.iface_id, why)
        self._rx_wait = why

    # -- receive ---------------------------------------------------------------------------
    def _receive(self) -> None:
        """Move frames from the TAP to the driver until one side runs dry (lock held)."""
        mem, interrupt = self.mem, self.interrupt
        if mem is None or interrupt is None or self._rx_wait is not None or self._closed:
            return
        queue = self.queues[RX_QUEUE]
        if not queue.ready:
            self._stop_rx(_Wait.BUFFERS)
            return
        used = 0
        for _ in range(BUDGET):
            if not self._rx_len and not self._read_tap():
                break
            if not self._rx_admitted:
                if not self.rx_limiter.consume_io(self._rx_len, 1):
                    self.metrics.rx_rate_limiter_throttled += 1
                    self._stop_rx(_Wait.LIMITER)
                    self._arm(RX_QUEUE, self.rx_limiter)
                    break
                self._rx_admitted = True
            delivery = deliver(mem, queue, self._rx_view[: self._rx_len], self.has_feature(VIRTIO_NET_F_MRG_RXBUF))
            if delivery is None:
                self.metrics.no_rx_avail_buffer += 1
                self._stop_rx(_Wait.BUFFERS)
                break
            if delivery.dropped is None:
                self.metrics.rx_packets_count += 1
                self.metrics.rx_bytes_count += self._rx_len - VNET_HDR_LEN
            else:
                self.metrics.rx_fails += 1
                log.debug("virtio-net %s: receive frame dropped: %s", self.iface_id, delivery.dropped)
            used += delivery.chains
            self._rx_len, self._rx_admitted = 0, False
        if used and queue.needs_notification(mem):
            interrupt.signal_used_queue()

    def _read_tap(self) -> bool:
        """Read one frame into the bounce buffer; False when there is none to read now."""
        while True:
            try:
                n = os.readv(self.tap.fd, [self._rx_view])
            except BlockingIOError:
                return False
            except InterruptedError:
                continue
            except OSError as exc:
                self.metrics.tap_read_fails += 1
                if exc.errno in (errno.EFAULT, errno.EINVAL, errno.EMSGSIZE):
                    continue  # this frame is lost (the kernel dropped it), the TAP is fine
                log.warning("virtio-net %s: reading TAP %s failed: %s", self.iface_id, self.tap.name, exc.strerror)
                self._stop_rx(_Wait.DEAD)
                return False
            self.metrics.rx_count += 1
            if n < VNET_HDR_LEN:
                self.metrics.rx_fails += 1
                continue
            self._rx_len = n
            return True

    # -- transmit ----------------------------------------------------------------------------
    def _transmit(self, notified: bool = False) -> None:
        """Write the driver's frames to the TAP until the queue is empty or throttled (lock held)."""
        mem, interrupt = self.mem, self.interrupt
        if mem is None or interrupt is None or self._tx_throttled or self._closed:
            return
        queue = self.queues[TX_QUEUE]
        if not queue.ready:
            return
        used = False
        for count in range(BUDGET):
            chain = queue.pop(mem)
            if chain is None:
                if count == 0 and notified:
                    self.metrics.no_tx_avail_buffer += 1
                break
            frame = tx_frame(mem, chain, self.acked_features)
            if isinstance(frame, str):
                self.metrics.tx_malformed_frames += 1
                self.metrics.tx_fails += 1
                log.debug("virtio-net %s: transmit frame refused: %s", self.iface_id, frame)
            else:
                views, length = frame
                if not self.tx_limiter.consume_io(length, 1):
                    queue.undo_pop()  # the same chain, when the timer fires
                    self.metrics.tx_rate_limiter_throttled += 1
                    self._tx_throttled = True
                    self._arm(TX_QUEUE, self.tx_limiter)
                    break
                self._write_tap(views, length)
            if chain.head_valid:
                queue.add_used(mem, chain.head_index, 0)
                used = True
        else:
            generation = self._generation
            self._loop.call_soon(partial(self._continue_tx, generation))
        if used and queue.needs_notification(mem):
            interrupt.signal_used_queue()

    def _continue_tx(self, generation: int) -> None:
        with self._lock:
            if generation == self._generation:
                self._transmit()

    def _write_tap(self, views: list[memoryview], length: int) -> None:
        try:
            written = os.writev(self.tap.fd, views)
        except BlockingIOError:
            self.metrics.tap_write_fails += 1  # the kernel's queue is full: dropped, as a NIC would
            return
        except OSError as exc:
            self.metrics.tap_write_fails += 1
            self.metrics.tx_fails += 1
            log.debug("virtio-net %s: TAP %s refused a frame: %s", self.iface_id, self.tap.name, exc.strerror)
            return
        if written != length:
            self.metrics.tx_partial_reads += 1
        self.metrics.tx_count += 1
        self.metrics.tx_packets_count += 1
        self.metrics.tx_bytes_count += length - VNET_HDR_LEN
