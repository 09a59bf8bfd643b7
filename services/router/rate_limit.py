"""Per-key request rates: a token bucket per API key.

Each key may send `burst` requests at once and `rpm` per minute on average;
a request over the limit is refused with the seconds until the bucket holds
a token again (the Retry-After). Keys with an `rpm` of their own in the keys
file use it instead of the router-wide rate.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .admission import RetryLater
from .auth import Principal


class TokenBucket:
    def __init__(self, rate_per_s: float, burst: float, now: float) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.tokens = burst
        self.updated = now

    def take(self, now: float) -> float:
        """0 if a token was taken, else the seconds until one is available."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate_per_s)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate_per_s


class RateLimiter:
    def __init__(self, rpm: float, burst: int = 0, clock: Callable[[], float] = time.monotonic) -> None:
        """`rpm` 0 means unlimited; `burst` 0 means a minute's worth of requests."""
        self.rpm = rpm
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def check(self, principal: Principal) -> None:
        """Count one request for `principal`; RetryLater if it is over its rate."""
        rpm = self.rpm if principal.rpm is None else principal.rpm
        if rpm <= 0:
            return
        now = self._clock()
        bucket = self._buckets.get(principal.name)
        if bucket is None or bucket.rate_per_s != rpm / 60.0:
            bucket = TokenBucket(rpm / 60.0, float(self.burst or max(1.0, rpm)), now)
            self._buckets[principal.name] = bucket
        wait = bucket.take(now)
        if wait > 0:
            raise RetryLater(
                f"rate limit of {rpm:g} requests per minute reached for {principal.name}; "
                f"retry after {wait:.1f}s",
                wait,
            )
