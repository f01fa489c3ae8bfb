"""Token buckets keyed by a string (client address, user id), with time passed in.

`Rate` is one rule ("60/1s burst 120": on average 60 per second, up to 120 at once),
parsed from the config. `BucketLimiter` holds one bucket per key under a rule; a take
has a cost, so one limiter counts messages and another counts their bytes.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

#: Period units a rule may use.
_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
#: Size units an amount may carry (binary, as max_upload_bytes and friends are).
_SIZES = {"": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}
_NUMBER = r"(\d+(?:\.\d+)?)\s*(KiB|MiB|GiB)?"
_RULE = re.compile(
    rf"\s*{_NUMBER}\s*/\s*(\d+(?:\.\d+)?)?\s*([smhd])(?:\s*,?\s*burst\s+{_NUMBER})?\s*",
    re.IGNORECASE)
#: Rules that mean "no limit".
OFF = ("off", "")


@dataclass(frozen=True, slots=True)
class Rate:
    """`amount` per `period` seconds on average, and at most `burst` at once."""

    amount: float
    period: float
    burst: float

    @property
    def per_second(self) -> float:
        return self.amount / self.period

    def __str__(self) -> str:
        return f"{_amount(self.amount)}/{_period(self.period)} burst {_amount(self.burst)}"


def parse_rate(text: str) -> Rate | None:
    """"AMOUNT/PERIOD" with an optional "burst AMOUNT"; None for "off" (no limit).

    AMOUNT is a number, optionally in KiB, MiB or GiB (byte buckets); PERIOD is an
    optional number and a unit, s, m, h or d ("1s", "15m", "d"). Without a burst the
    bucket holds one period's worth. Raises ValueError saying what is wrong."""
    if text.strip().lower() in OFF:
        return None
    match = _RULE.fullmatch(text)
    if match is None:
        raise ValueError(f'expected "AMOUNT/PERIOD" or "AMOUNT/PERIOD burst AMOUNT" (e.g. '
                         f'"60/1s burst 120", "100/15m", "1GiB/1h"), or "off"; got {text!r}')
    amount = float(match[1]) * _SIZES[(match[2] or "").lower()]
    period = float(match[3] or 1) * _PERIODS[match[4].lower()]
    burst = amount if match[5] is None else float(match[5]) * _SIZES[(match[6] or "").lower()]
    if amount <= 0 or period <= 0:
        raise ValueError(f"the amount and the period must be greater than 0; got {text!r}")
    if burst < 1:
        raise ValueError(f"the burst must be at least 1; got {text!r}")
    return Rate(amount, period, burst)


def _amount(value: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= size and value % size == 0:
            return f"{value / size:g}{unit}"
    return f"{value:g}"


def _period(seconds: float) -> str:
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


class BucketLimiter:
    """One token bucket per key under one `Rate`.

    A take of `cost` is allowed when the bucket holds at least min(cost, burst) tokens,
    and then takes all of `cost`, so the bucket may go below zero: a take larger than the
    burst (a 1 GiB upload under a smaller burst) passes when the bucket is full and is
    paid back at the rate before the next. Without that such a take could never pass.

    Holds at most `max_keys` buckets; the least recently used is forgotten first, which
    can only make the limiter more lenient, never grow memory without bound.
    """

    def __init__(self, rate: Rate, max_keys: int = 100_000) -> None:
        self.rate = rate
        self._max_keys = max_keys
        #: key -> (tokens, when they were counted)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _tokens(self, key: str, now: float) -> float:
        tokens, stamp = self._buckets.get(key, (self.rate.burst, now))
        return min(self.rate.burst, tokens + max(0.0, now - stamp) * self.rate.per_second)

    def wait(self, key: str, cost: float, now: float) -> float:
        """Seconds until a take of `cost` would pass (0.0: it would pass now)."""
        missing = min(cost, self.rate.burst) - self._tokens(key, now)
        return missing / self.rate.per_second if missing > 0 else 0.0

    def take(self, key: str, cost: float, now: float) -> float:
        """Take `cost` if allowed (returns 0.0); else take nothing and return the wait."""
        wait = self.wait(key, cost, now)
        if wait == 0.0:
            self._store(key, self._tokens(key, now) - cost, now)
        return wait

    def charge(self, key: str, cost: float, now: float) -> None:
        """Take `cost` whatever the bucket holds (it may go below zero)."""
        self._store(key, self._tokens(key, now) - cost, now)

    def refund(self, key: str, cost: float, now: float) -> None:
        """Give back what a take cost (the operation it paid for did not happen)."""
        if key in self._buckets:
            self._store(key, min(self.rate.burst, self._tokens(key, now) + cost), now)

    def _store(self, key: str, tokens: float, now: float) -> None:
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        if len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)


class KeyedRateLimiter:
    """Allows `burst` events at once and `per_second` on average, per key (one event per
    take): the typing notices' limit."""

    def __init__(self, per_second: float, burst: int, max_keys: int = 100_000) -> None:
        if per_second <= 0 or burst < 1:
            raise ValueError("rate and burst must be positive")
        self.per_second = per_second
        self.burst = burst
        self._limiter = BucketLimiter(Rate(per_second, 1.0, float(burst)), max_keys)

    def try_acquire(self, key: str, now: float) -> float:
        """Take one token. Returns 0.0 if allowed, else the seconds until a token is due."""
        return self._limiter.take(key, 1.0, now)

    def __len__(self) -> int:
        return len(self._limiter)
