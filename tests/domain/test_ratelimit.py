from __future__ import annotations

from chatd.domain.ratelimit import KeyedRateLimiter


def test_burst_then_steady_rate_per_key() -> None:
    limiter = KeyedRateLimiter(per_second=1.0, burst=2)
    assert limiter.try_acquire("a", 0.0) == 0.0
    assert limiter.try_acquire("a", 0.0) == 0.0
    assert limiter.try_acquire("a", 0.0) == 1.0
    assert limiter.try_acquire("b", 0.0) == 0.0  # another key is untouched
    assert limiter.try_acquire("a", 1.0) == 0.0  # refilled one token


def test_memory_is_bounded() -> None:
    limiter = KeyedRateLimiter(per_second=1.0, burst=1, max_keys=10)
    for n in range(100):
        limiter.try_acquire(str(n), 0.0)
    assert len(limiter._buckets) == 10
