"""virtio-blk backed by a raw image file (virtio 1.2 §5.2).

Requests are served synchronously on the thread that calls
:meth:`Block.process_queue` (the event loop), with ``os.preadv``/``os.pwritev``
straight between the file and guest memory. Every guest-supplied sector and
length is checked against the disk; a bad request completes with an error
status, a chain that has no place for a status is returned with length 0.

An optional rate limiter (Firecracker's drive ``rate_limiter``) is asked before
each request, as Firecracker counts: one op, plus the data bytes of a read or
write (flush, get-id and unsupported types cost an op and no bytes; a chain that
does not parse costs nothing). A refused request goes back to the available ring
and the queue sleeps until the limiter's one-shot timer (:mod:`firelet.devices.throttle`).
"""

from __future__ import annotations

import dataclasses
import os
import stat
import struct
import threading
from collections.abc import Callable, Sequence
from typing import ClassVar

from firelet.devices.protocols import Timers
from firelet.devices.rate_limiter import LimiterConfig, RateLimiter
from firelet.devices.throttle import Throttle
from firelet.devices.virtio.block.request import (
    SECTOR_SHIFT,
    SECTOR_SIZE,
    VIRTIO_BLK_ID_BYTES,
    VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    Drop,
    Request,
    parse,
)
from firelet.devices.virtio.device import TYPE_BLOCK, InterruptSignal, VirtioDeviceBase
from firelet.devices.virtio.queue import VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, Queue
from firelet.errors import FireletError
from firelet.log import get_logger
from firelet.memory.guest import GuestMemory
from firelet.records import RecordError

log = get_logger(__name__)

# §5.2.3 feature bits.
VIRTIO_BLK_F_SEG_MAX = 2
VIRTIO_BLK_F_RO = 5
VIRTIO_BLK_F_FLUSH = 9

QUEUE_SIZE = 256
#: Data segments per request we accept (announced as seg_max); Linux adds header and status.
SEG_MAX = QUEUE_SIZE - 2
#: §5.2.4 config layout up to seg_max: le64 capacity, le32 size_max, le32 seg_max.
_CONFIG = struct.Struct("<QII")
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024


class BlockError(FireletError):
    """A drive's backing file cannot be used."""


class BlockMetrics:
    """One drive's counters (folded into the process metrics by the controller)."""

    def __init__(self, throttle: Throttle) -> None:
        self._throttle = throttle
        self.read_bytes = 0
        self.write_bytes = 0
        self.read_ops = 0
        self.write_ops = 0
        self.flush_ops = 0
        self.get_id_ops = 0
        self.failures = 0  # requests completed with IOERR or UNSUPP
        self.dropped = 0  # chains returned with length 0 (malformed, no header, no status)

    @property
    def rate_limiter_throttled_events(self) -> int:
        """Requests refused by the limiter, and queue notifications while throttled (Firecracker's name)."""
        return self._throttle.throttled_events

    @property
    def rate_limiter_event_count(self) -> int:
        """Times the limiter's timer woke the queue (Firecracker's name)."""
        return self._throttle.wakeups


@dataclasses.dataclass(frozen=True)
class BlockState:
    """What a drive decided and the driver accepted; its queues are in the transport's state.

    ``path`` and ``read_only`` say which image to open again; ``capacity`` (in
    sectors) is what the guest was told, so a restore refuses an image of
    another size. The metrics are counters of this process, not of the guest,
    and stay out (as in Firecracker's snapshots). So does the rate limiter: its
    buckets come from the drive's config (which a PATCH updates) and start full
    on restore, where Firecracker's snapshot carries the tokens left; a request
    the limiter was holding back is still in the available ring (it was never
    popped), so the restored device serves it.
    """

    VERSION: ClassVar[int] = 1

    path: str
    read_only: bool
    drive_id: bytes
    capacity: int
    acked_features: int


class Block(VirtioDeviceBase):
    """A virtio block device over ``path``; call :meth:`close` when the VM ends."""

    device_type = TYPE_BLOCK
    queue_max_sizes = (QUEUE_SIZE,)

    def __init__(self, path: str | os.PathLike[str], *, read_only: bool = False, drive_id: str = "",
                 rate_limiter: RateLimiter | None = None, timers: Timers | None = None) -> None:
        """``timers`` (the event loop) is needed for a ``rate_limiter`` with limits, and for a
        later :meth:`update_rate_limiter`."""
        features = (
            1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
        )
        if read_only:
            features |= 1 << VIRTIO_BLK_F_RO
        super().__init__(features)
        self.read_only = read_only
        self.drive_id = drive_id.encode()[:VIRTIO_BLK_ID_BYTES].ljust(VIRTIO_BLK_ID_BYTES, b"\0")
        self._timers = timers
        self.throttle = Throttle(rate_limiter or RateLimiter(), timers, self._resume)
        self.metrics = BlockMetrics(self.throttle)
        self._lock = threading.Lock()
        self._write_through = False
        self.path = os.fspath(path)
        self._fd, self.capacity = _open(self.path, read_only)

    # -- configuration ----------------------------------------------------------
    def config_space(self) -> bytes:
        return _CONFIG.pack(self.capacity, 0, SEG_MAX)

    def update_backing_file(self, path: str | os.PathLike[str]) -> None:
        """Swap the image (PATCH /drives): new file, new capacity, a config interrupt."""
        fd, capacity = _open(os.fspath(path), self.read_only)
        with self._lock:
            old, self._fd = self._fd, fd
            self.path, self.capacity = os.fspath(path), capacity
            _flush_and_close(old, self.read_only)
            interrupt = self.interrupt
        if interrupt is not None:
            interrupt.signal_config_change()

    def update_rate_limiter(self, config: LimiterConfig) -> None:
        """Replace the limiter's buckets live (PATCH /drives): a bucket not given stays as it is,
        a given one starts full, size or refill_time 0 lifts that limit. A throttled queue
        is looked at again at once. ValueError for a bad value, with nothing changed."""
        self.throttle.update(config)

    def close(self) -> None:
        """Flush written data and close the file (idempotent)."""
        self.throttle.cancel()
        with self._lock:
            if self._fd >= 0:
                _flush_and_close(self._fd, self.read_only)
                self._fd = -1

    # -- snapshots --------------------------------------------------------------------
    def save_state(self) -> BlockState:
        with self._lock:
            return BlockState(self.path, self.read_only, self.drive_id, self.capacity, self.acked_features)

    def restore_state(self, state: BlockState) -> None:
        """Take ``state`` over on a device opened on the saved image (the transport re-activates it)."""
        if state.read_only != self.read_only or state.capacity != self.capacity:
            raise RecordError(
                f"drive image {self.path} ({self.capacity} sectors, {'read-only' if self.read_only else 'read-write'}) "
                f"is not the saved one ({state.capacity} sectors, {'read-only' if state.read_only else 'read-write'})"
            )
        if state.drive_id != self.drive_id:
            raise RecordError(f"drive id {self.drive_id!r} differs from the saved {state.drive_id!r}")
        if state.acked_features & ~self.avail_features:
            raise RecordError(f"saved drive features {state.acked_features:#x} were never offered "
                              f"({self.avail_features:#x})")
        self.acked_features = state.acked_features

    def activate(self, mem: GuestMemory, queues: Sequence[Queue], interrupt: InterruptSignal) -> None:
        super().activate(mem, queues, interrupt)
        # Without FLUSH the driver may assume writes are durable on completion (§5.2.6.2).
        self._write_through = not self.has_feature(VIRTIO_BLK_F_FLUSH)
        if self._timers is not None:
            # A restored ring may hold requests the driver notified before the save and a
            # throttled device had not taken: look once (an empty ring costs nothing).
            self._timers.call_soon(self._resume)

    def reset(self) -> None:
        self.throttle.cancel()
        with self._lock:
            super().reset()

    # -- the request queue ----------------------------------------------------------
    def process_queue(self, index: int) -> None:
        """Serve every available request the limiter lets through, then interrupt once if the
        driver wants it. While throttled a notification only counts: the timer resumes."""
        if index == 0 and self.throttle.notified():
            self._serve_queue()

    def _resume(self) -> None:
        """The limiter's timer fired (or its buckets changed): serve what waited (the loop's thread)."""
        self._serve_queue()

    def _serve_queue(self) -> None:
        with self._lock:
            mem, interrupt = self.mem, self.interrupt
            if mem is None or interrupt is None or not self.queues[0].ready:
                return
            queue = self.queues[0]
            used = False
            while (chain := queue.pop(mem)) is not None:
                request = parse(mem, chain)
                if isinstance(request, Request) and not self.throttle.admit(_data_bytes(request)):
                    queue.undo_pop()  # served in order when the timer fires
                    break
                length = self._serve(mem, request)
                if chain.head_valid:
                    queue.add_used(mem, chain.head_index, length)
                    used = True
            if used and queue.needs_notification(mem):
                interrupt.signal_used_queue()

    def _serve(self, mem: GuestMemory, request: Request | Drop) -> int:
        """Execute one request; returns the used length (bytes written for the driver)."""
        if isinstance(request, Drop):
            self.metrics.dropped += 1
            log.debug("virtio-blk: dropping request: %s", request.value)
            return 0
        status, written = self._execute(request)
        request.status[0] = status
        if status != VIRTIO_BLK_S_OK:
            self.metrics.failures += 1
        return written + 1

    def _execute(self, req: Request) -> tuple[int, int]:
        """(status, data bytes written into the driver's buffers)."""
        if req.type == VIRTIO_BLK_T_IN:
            return self._read(req)
        if req.type == VIRTIO_BLK_T_OUT:
            return self._write(req)
        if req.type == VIRTIO_BLK_T_FLUSH:
            self.metrics.flush_ops += 1
            if not self.read_only and not _sync(self._fd):
                return VIRTIO_BLK_S_IOERR, 0
            return VIRTIO_BLK_S_OK, 0
        if req.type == VIRTIO_BLK_T_GET_ID:
            self.metrics.get_id_ops += 1
            return VIRTIO_BLK_S_OK, _scatter(self.drive_id, req.writable)
        return VIRTIO_BLK_S_UNSUPP, 0

    def _in_range(self, sector: int, length: int, segments: int) -> bool:
        return (
            length % SECTOR_SIZE == 0
            and segments <= SEG_MAX
            and sector + (length >> SECTOR_SHIFT) <= self.capacity
        )

    def _read(self, req: Request) -> tuple[int, int]:
        length = req.writable_len
        if req.readable or not self._in_range(req.sector, length, len(req.writable)):
            return VIRTIO_BLK_S_IOERR, 0
        done = _transfer(os.preadv, self._fd, req.writable, req.sector << SECTOR_SHIFT)
        self.metrics.read_ops += 1
        self.metrics.read_bytes += max(done, 0)
        if done != length:
            return VIRTIO_BLK_S_IOERR, max(done, 0)
        return VIRTIO_BLK_S_OK, done

    def _write(self, req: Request) -> tuple[int, int]:
        length = req.readable_len
        if self.read_only or req.writable or not self._in_range(req.sector, length, len(req.readable)):
            return VIRTIO_BLK_S_IOERR, 0
        done = _transfer(os.pwritev, self._fd, req.readable, req.sector << SECTOR_SHIFT)
        self.metrics.write_ops += 1
        self.metrics.write_bytes += max(done, 0)
        if done != length or (self._write_through and not _sync(self._fd)):
            return VIRTIO_BLK_S_IOERR, 0
        return VIRTIO_BLK_S_OK, 0


def _data_bytes(req: Request) -> int:
    """What a request costs the bandwidth bucket: a read's or write's data bytes (as Firecracker)."""
    if req.type == VIRTIO_BLK_T_IN:
        return req.writable_len
    if req.type == VIRTIO_BLK_T_OUT:
        return req.readable_len
    return 0


def _open(path: str, read_only: bool) -> tuple[int, int]:
    """Open an image; returns (fd, capacity in sectors). Trailing partial sectors are unused."""
    flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        mode = "read-only" if read_only else "read-write"
        raise BlockError(f"cannot open drive image {path} {mode}: {exc.strerror}; check the path and "
                         "its permissions") from exc
    try:
        st_mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(st_mode) or stat.S_ISBLK(st_mode)):
            raise BlockError(f"drive image {path} is not a regular file or block device; give a raw disk image")
        size = os.lseek(fd, 0, os.SEEK_END)  # works for block devices too, unlike st_size
    except OSError as exc:
        os.close(fd)
        raise BlockError(f"cannot get the size of drive image {path}: {exc.strerror}") from exc
    except BlockError:
        os.close(fd)
        raise
    return fd, size >> SECTOR_SHIFT


def _sync(fd: int) -> bool:
    try:
        os.fdatasync(fd)
    except OSError as exc:
        log.warning("virtio-blk: flush failed: %s", exc)
        return False
    return True


def _flush_and_close(fd: int, read_only: bool) -> None:
    if not read_only:
        _sync(fd)
    os.close(fd)


def _transfer(op: Callable[[int, list[memoryview], int], int], fd: int, views: list[memoryview], offset: int) -> int:
    """Run preadv/pwritev until every view is done; returns bytes moved (-1 on an error)."""
    pending = [v for v in views if len(v)]
    done = 0
    start = 0
    while start < len(pending):
        try:
            count = op(fd, pending[start : start + _IOV_MAX], offset + done)
        except OSError as exc:
            log.warning("virtio-blk: I/O error at byte %d: %s", offset + done, exc)
            return -1 if done == 0 else done
        if count <= 0:
            break  # end of file: the image shrank under us
        done += count
        while count and start < len(pending):
            if count >= len(pending[start]):
                count -= len(pending[start])
                start += 1
            else:
                pending[start] = pending[start][count:]
                count = 0
    return done


def _scatter(data: bytes, views: list[memoryview]) -> int:
    """Copy ``data`` into a list of buffers as far as they reach; returns bytes copied."""
    copied = 0
    for view in views:
        n = min(len(view), len(data) - copied)
        view[:n] = data[copied : copied + n]
        copied += n
        if copied == len(data):
            break
    return copied
