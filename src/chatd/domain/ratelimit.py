"""Token buckets keyed by a string (client address, user id), with time passed in."""

from __future__ import annotations

from collections import OrderedDict


class KeyedRateLimiter:
    """Allows `burst` events at once and `per_second` on average, per key.

    Holds at most `max_keys` buckets; the least recently used is forgotten first, which
    can only make the limiter more lenient, never grow memory without bound.
    """

    def __init__(self, per_second: float, burst: int, max_keys: int = 100_000) -> None:
        if per_second <= 0 or burst < 1:
            raise ValueError("rate and burst must be positive")
        self.per_second = per_second
        self.burst = burst
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def try_acquire(self, key: str, now: float) -> float:
        """Take one token. Returns 0.0 if allowed, else the seconds until a token is due."""
        tokens, stamp = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - stamp) * self.per_second)
        if tokens >= 1.0:
            wait = 0.0
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.per_second
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return wait
