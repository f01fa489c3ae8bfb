from __future__ import annotations

import pytest

from chatd.domain.ratelimit import BucketLimiter, KeyedRateLimiter, Rate, parse_rate


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
    assert len(limiter) == 10


@pytest.mark.parametrize(("text", "rate"), [
    ("60/1s burst 120", Rate(60, 1, 120)),
    ("60/s", Rate(60, 1, 60)),
    ("100/15m", Rate(100, 900, 100)),
    ("200/1d, burst 50", Rate(200, 86400, 50)),
    ("1MiB/1s burst 8MiB", Rate(1 << 20, 1, 8 << 20)),
    ("4GiB/1h burst 2GiB", Rate(4 << 30, 3600, 2 << 30)),
    (" 0.5 / 2h burst 3 ", Rate(0.5, 7200, 3)),
    ("10KiB/1m", Rate(10 << 10, 60, 10 << 10)),
])
def test_rules_parse(text: str, rate: Rate) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["off", "OFF", ""])
def test_off_is_no_limit(text: str) -> None:
    assert parse_rate(text) is None


@pytest.mark.parametrize("text", ["60", "60/1w", "sixty/1s", "60/1s burst", "0/1s",
                                  "60/0s", "60/1s burst 0", "-1/1s", "60/1s burst 5 extra",
                                  "1TiB/1s", "0.5/2h"])
def test_bad_rules_are_refused_with_the_form(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_rate(text)
    assert repr(text) in str(caught.value)


def test_a_rule_reads_back_as_written() -> None:
    for text in ("60/1s burst 120", "100/15m burst 100", "1MiB/1s burst 8MiB",
                 "4GiB/1h burst 2GiB", "200/1d burst 50"):
        rate = parse_rate(text)
        assert rate is not None and str(rate) == text
        assert parse_rate(str(rate)) == rate


def test_cost_is_taken_from_the_bucket() -> None:
    limiter = BucketLimiter(Rate(100, 1, 100))  # 100 a second, 100 at once
    assert limiter.take("a", 60, 0.0) == 0.0
    assert limiter.take("a", 60, 0.0) == pytest.approx(0.2)  # 40 left, 20 missing
    assert limiter.take("a", 40, 0.0) == 0.0  # the refusal took nothing
    assert limiter.take("a", 1, 0.0) == pytest.approx(0.01)
    assert limiter.take("a", 50, 0.5) == 0.0  # refilled 50 in half a second


def test_a_take_larger_than_the_burst_passes_when_full_and_is_paid_back() -> None:
    limiter = BucketLimiter(Rate(10, 1, 10))
    assert limiter.take("a", 35, 0.0) == 0.0  # full: the whole 35 is taken
    # 25 in debt: a take of one needs 26 more tokens, 2.6 s at 10 a second.
    assert limiter.take("a", 1, 0.0) == pytest.approx(2.6)
    assert limiter.wait("a", 35, 2.0) == pytest.approx(1.5)  # a full bucket again: 15 more
    assert limiter.take("a", 1, 2.6) == 0.0


def test_the_bucket_never_holds_more_than_the_burst() -> None:
    limiter = BucketLimiter(Rate(1, 1, 3))
    assert limiter.take("a", 1, 0.0) == 0.0
    assert limiter.take("a", 3, 1000.0) == 0.0  # idle for long: full, not 1000 tokens
    assert limiter.take("a", 1, 1000.0) == pytest.approx(1.0)


def test_wait_does_not_take() -> None:
    limiter = BucketLimiter(Rate(1, 1, 2))
    for _ in range(5):
        assert limiter.wait("a", 2, 0.0) == 0.0
    assert limiter.take("a", 2, 0.0) == 0.0


def test_refund_gives_back_up_to_the_burst() -> None:
    limiter = BucketLimiter(Rate(1, 60, 2))  # one a minute
    assert limiter.take("a", 2, 0.0) == 0.0
    limiter.refund("a", 1, 0.0)
    assert limiter.take("a", 1, 0.0) == 0.0
    assert limiter.take("a", 1, 0.0) == pytest.approx(60.0)
    limiter.refund("a", 10, 0.0)  # more than was taken: the bucket is full, no more
    assert limiter.take("a", 2, 0.0) == 0.0
    assert limiter.take("a", 1, 0.0) > 0


def test_charge_goes_into_debt_without_refusing() -> None:
    limiter = BucketLimiter(Rate(10, 1, 10))
    limiter.charge("a", 30, 0.0)
    assert limiter.wait("a", 1, 0.0) == pytest.approx(2.1)


def test_many_keys_stay_bounded_and_forgetting_is_lenient() -> None:
    limiter = BucketLimiter(Rate(1, 3600, 1), max_keys=3)
    for key in "abcd":
        assert limiter.take(key, 1, 0.0) == 0.0
    assert len(limiter) == 3
    assert limiter.take("a", 1, 0.0) == 0.0  # "a" was forgotten: a full bucket again
    assert limiter.take("d", 1, 0.0) > 0  # "d" is remembered
