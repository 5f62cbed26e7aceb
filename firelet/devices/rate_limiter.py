"""Token-bucket I/O rate limiting with Firecracker's semantics, for virtio-block and virtio-net.

A :class:`RateLimiter` holds two optional buckets (``firecracker.yaml``: ``RateLimiter``,
``TokenBucket``): ``bandwidth`` counts bytes, ``ops`` counts requests. A bucket holds ``size``
tokens, starts full, and refills at ``size`` tokens per ``refill_time`` ms, never above ``size``;
``one_time_burst`` is extra credit spent first and never refilled. A bucket whose ``size`` or
``refill_time`` is 0 is no bucket at all (no limit), which is how Firecracker disables one.

What firelet does differently from Firecracker, and why:

* A refused request gets the exact time at which it will be admitted (:attr:`RateLimiter.wake_at_ns`),
  so the device arms one timer for that moment; Firecracker re-polls every 100 ms.
* A request larger than the whole bucket is admitted once the bucket is full: it empties the
  bucket and the rest becomes debt, which refilling pays back before anything else is admitted.
  Large requests are never starved, and the long-run rate still holds: over any window the
  tokens admitted are at most ``size + one_time_burst + rate * window`` plus the excess
  (``tokens - size``) of one such request. (Firecracker admits it on any budget and forgives
  the debt after a timer, which lets oversized traffic run above the configured rate.)
* Arithmetic is on integers: the level is kept in units of 1/(refill_ns/gcd) token, so refills
  carry every fraction of a token forward and nothing drifts, whatever the values (up to u64).
* Time comes from an injected monotonic clock in nanoseconds, so tests control it exactly.

Devices are single-threaded users (the event loop); no locking here.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

#: Firecracker decodes every TokenBucket field as a Rust u64.
U64_MAX = (1 << 64) - 1
NS_PER_MS = 1_000_000
#: Firecracker keeps the refill time in u64 nanoseconds; a longer one would silently disable the
#: bucket there (``TokenBucket::new`` returns no bucket), so firelet refuses it instead.
MAX_REFILL_TIME_MS = U64_MAX // NS_PER_MS


class TokenKind(enum.Enum):
    """Which bucket a consumption draws on, named as the API's fields are."""

    BYTES = "bandwidth"
    OPS = "ops"


class BucketConfig(Protocol):
    """A bucket's settings: the config model's ``TokenBucket`` and :class:`Bucket` both fit."""

    @property
    def size(self) -> int: ...
    @property
    def refill_time(self) -> int: ...
    @property
    def one_time_burst(self) -> int | None: ...


class LimiterConfig(Protocol):
    """A limiter's settings: the config model's ``RateLimiter`` fits (devices cannot import config)."""

    @property
    def bandwidth(self) -> BucketConfig | None: ...
    @property
    def ops(self) -> BucketConfig | None: ...


@dataclass(frozen=True)
class Bucket:
    """Plain bucket settings for callers without a config model (the Python API, tests)."""

    size: int
    refill_time: int
    one_time_burst: int | None = None


def _check_u64(field: str, value: object, maximum: int = U64_MAX) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{field}: expected int, got {value!r}")  # a caller's bug: config types it
    if value < 0:
        raise ValueError(f"{field}: expected int >= 0, got {value}")
    if value > maximum:
        raise ValueError(f"{field}: expected int <= {maximum}, got {value}")
    return value


def validate_bucket(bucket: BucketConfig, field: str = "") -> None:
    """Refuse a negative or overflowing value (ValueError; TypeError for a non-int) with one
    line naming the field.

    Messages follow firelet's decoding errors (``bandwidth.size: expected int >= 0, got -1``):
    Firecracker itself has no wording of its own here, only its JSON decoder's. ``field`` is
    the bucket's path, e.g. ``"drives[0].rate_limiter.bandwidth"``.
    """
    prefix = f"{field}." if field else ""
    _check_u64(prefix + "size", bucket.size)
    _check_u64(prefix + "refill_time", bucket.refill_time, MAX_REFILL_TIME_MS)
    if bucket.one_time_burst is not None:
        _check_u64(prefix + "one_time_burst", bucket.one_time_burst)


def validate_limiter(limiter: LimiterConfig, field: str = "") -> None:
    """:func:`validate_bucket` on both buckets of a limiter's settings."""
    prefix = f"{field}." if field else ""
    for name, bucket in (("bandwidth", limiter.bandwidth), ("ops", limiter.ops)):
        if bucket is not None:
            validate_bucket(bucket, prefix + name)


class TokenBucket:
    """One bucket's state. Pure: every call that depends on time is given ``now_ns``.

    The level is an integer in units where one nanosecond adds ``_gain`` and one token costs
    ``_cost`` (``size/refill_ns`` reduced by their gcd), so the rate is exact. The level goes
    below 0 only as the debt of an oversized request.
    """

    def __init__(self, size: int, refill_time_ms: int, one_time_burst: int = 0) -> None:
        validate_bucket(Bucket(size, refill_time_ms, one_time_burst))
        if size == 0 or refill_time_ms == 0:
            raise ValueError("a bucket needs size > 0 and refill_time > 0; 0 means no bucket (no limit)")
        self.size = size
        self.refill_time = refill_time_ms
        self.initial_one_time_burst = one_time_burst
        self.one_time_burst = one_time_burst
        refill_ns = refill_time_ms * NS_PER_MS
        common = math.gcd(size, refill_ns)
        self._gain = size // common
        self._cost = refill_ns // common
        self._cap = size * self._cost
        self._level = self._cap  # buckets start full
        self._last_ns = 0  # a full bucket needs no start time

    @classmethod
    def from_config(cls, config: BucketConfig) -> TokenBucket | None:
        """A fresh, full bucket, or None for Firecracker's "no limit" (size or refill_time 0)."""
        validate_bucket(config)
        if config.size == 0 or config.refill_time == 0:
            return None
        return cls(config.size, config.refill_time, config.one_time_burst or 0)

    @property
    def budget(self) -> int:
        """Whole tokens in the bucket now, excluding the one-time burst; negative while in debt."""
        return self._level // self._cost

    def _refill(self, now_ns: int) -> None:
        if now_ns > self._last_ns:  # a clock that steps back is ignored
            if self._level < self._cap:
                level = self._level + (now_ns - self._last_ns) * self._gain
                self._level = min(self._cap, level)
            self._last_ns = now_ns

    def delay_ns(self, tokens: int, now_ns: int) -> int:
        """Nanoseconds until ``tokens`` may be taken (0: now). Changes nothing observable."""
        self._refill(now_ns)
        burst = self.one_time_burst
        if tokens <= burst:
            return 0
        # An oversized request waits for a full bucket, not for more than the bucket can hold.
        need = tokens - burst
        missing = min(self.size, need) * self._cost - self._level
        return 0 if missing <= 0 else -(-missing // self._gain)

    def take(self, tokens: int) -> bool:
        """Spend ``tokens``, burst first; only right after :meth:`delay_ns` returned 0.

        Returns whether this overdrew the bucket (an oversized request, now owed).
        """
        burst = self.one_time_burst
        if tokens <= burst:
            self.one_time_burst = burst - tokens
            return False
        self.one_time_burst = 0
        self._level -= (tokens - burst) * self._cost
        return self._level < 0

    def replenish(self, tokens: int) -> None:
        """Give back ``tokens`` (an operation undone), capped as Firecracker caps it.

        While burst credit remains it goes back to the burst (up to its initial value), else
        to the bucket (up to ``size``).
        """
        if self.one_time_burst > 0:
            self.one_time_burst = min(self.one_time_burst + tokens, self.initial_one_time_burst)
        else:
            self._level = min(self._cap, self._level + tokens * self._cost)


Clock = Callable[[], int]


class RateLimiter:
    """A device queue's limiter: a bandwidth and an ops bucket, either possibly absent.

    Use: ``if limiter.consume_io(nbytes): do the I/O`` else stop taking requests and arm a
    one-shot timer for :attr:`wake_at_ns` (``time.monotonic_ns`` scale, i.e. CLOCK_MONOTONIC),
    then retry the same request. After :meth:`update_buckets`, retry at once.
    """

    def __init__(self, bandwidth: TokenBucket | None = None, ops: TokenBucket | None = None,
                 *, clock: Clock = time.monotonic_ns) -> None:
        self.bandwidth = bandwidth
        self.ops = ops
        self._clock = clock
        #: Refused consumptions (Firecracker's ``*rate_limiter_throttled*`` metrics count these).
        self.throttled_events = 0
        #: Oversized requests admitted on credit (each leaves the limiter in debt).
        self.overdrafts = 0
        #: When the last refused request will be admitted, in clock nanoseconds; None after a success.
        self.wake_at_ns: int | None = None
        #: The same as a delay from the refusal (0 after a success), for relative timers.
        self.wait_ns = 0

    @classmethod
    def from_config(cls, config: LimiterConfig | None, *, clock: Clock = time.monotonic_ns) -> RateLimiter:
        """A limiter from the API's/config file's ``RateLimiter`` (None: unlimited)."""
        if config is None:
            return cls(clock=clock)
        validate_limiter(config)
        bandwidth = TokenBucket.from_config(config.bandwidth) if config.bandwidth is not None else None
        ops = TokenBucket.from_config(config.ops) if config.ops is not None else None
        return cls(bandwidth, ops, clock=clock)

    @property
    def unlimited(self) -> bool:
        """True when no bucket limits anything, so a device may skip the limiter altogether."""
        return self.bandwidth is None and self.ops is None

    def _bucket(self, kind: TokenKind) -> TokenBucket | None:
        return self.bandwidth if kind is TokenKind.BYTES else self.ops

    def consume(self, tokens: int, kind: TokenKind) -> bool:
        """Take ``tokens`` of one kind if allowed now; on refusal nothing is taken."""
        if kind is TokenKind.BYTES:
            return self.consume_io(tokens, 0)
        return self.consume_io(0, tokens)

    def consume_io(self, nbytes: int, nops: int = 1) -> bool:
        """Take bytes and ops together, all or nothing: a request needs both to go.

        On refusal :attr:`wake_at_ns` is the first instant at which this same request is
        admitted (one nanosecond earlier it is not), provided nothing else consumes meanwhile.
        """
        if nbytes < 0 or nops < 0:
            raise ValueError(f"cannot consume a negative amount ({nbytes} bytes, {nops} ops)")
        bandwidth, ops = self.bandwidth, self.ops
        if bandwidth is None and ops is None:
            return True
        now = self._clock()
        wait = bandwidth.delay_ns(nbytes, now) if bandwidth is not None and nbytes else 0
        if ops is not None and nops:
            wait_ops = ops.delay_ns(nops, now)
            wait = max(wait, wait_ops)
        if wait:
            self.throttled_events += 1
            self.wait_ns, self.wake_at_ns = wait, now + wait
            return False
        if bandwidth is not None and nbytes and bandwidth.take(nbytes):
            self.overdrafts += 1
        if ops is not None and nops and ops.take(nops):
            self.overdrafts += 1
        self.wait_ns, self.wake_at_ns = 0, None
        return True

    def manual_replenish(self, tokens: int, kind: TokenKind) -> None:
        """Give back tokens taken for a request that did not happen (Firecracker's name)."""
        bucket = self._bucket(kind)
        if bucket is not None:
            bucket.replenish(tokens)

    def update_buckets(self, bandwidth: BucketConfig | None, ops: BucketConfig | None) -> None:
        """Apply a PATCH live, as Firecracker does: None keeps a bucket as it is; given
        settings replace it with a new full bucket (fresh one-time burst); size or
        refill_time 0 removes the limit. Validates both before changing either.
        """
        for name, config in (("bandwidth", bandwidth), ("ops", ops)):
            if config is not None:
                validate_bucket(config, name)
        if bandwidth is not None:
            self.bandwidth = TokenBucket.from_config(bandwidth)
        if ops is not None:
            self.ops = TokenBucket.from_config(ops)
