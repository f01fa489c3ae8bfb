"""RateLimits: named buckets per account and per address, over the domain's maths with
a clock the test moves. The buckets without a route yet (keys_claim, to_device, reports)
are tested here: a route only has to call `take`."""

from __future__ import annotations

import dataclasses

import pytest

from chatd.config import RateLimitsConfig
from chatd.errors import RateLimited
from chatd.protocol import frames
from chatd.services.ratelimits import BUCKETS, RateLimits


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limits(**rules: str) -> tuple[RateLimits, Clock]:
    clock = Clock()
    config = dataclasses.replace(RateLimitsConfig.unlimited(), **rules)
    return RateLimits(config, clock), clock


@pytest.mark.parametrize("bucket", ["keys_claim", "to_device", "reports"])
def test_buckets_waiting_for_their_routes_refuse_with_retry_after(bucket: str) -> None:
    ratelimits = RateLimits(RateLimitsConfig(), Clock())
    account, address = RateLimitsConfig().rules()[bucket]
    assert account is not None and address is not None
    ratelimits.take(bucket, account=1, address="192.0.2.1", cost=account.burst)
    with pytest.raises(RateLimited) as caught:
        ratelimits.take(bucket, account=1, address="192.0.2.1")
    assert caught.value.status == 429 and caught.value.code == "rate_limited"
    assert caught.value.retry_after == pytest.approx(account.period / account.amount)
    assert repr(bucket) in caught.value.message and "per account" in caught.value.message
    # The refusal as a WebSocket frame carries it too, in whole seconds.
    frame = frames.error_from(caught.value, "r1").payload
    assert frame["retry_after"] >= 1 and frame["code"] == "rate_limited"
    # Another account at another address is untouched.
    ratelimits.take(bucket, account=2, address="192.0.2.2")


def test_a_refusal_on_either_side_charges_neither() -> None:
    ratelimits, clock = limits(messages_per_account="2/1m", messages_per_address="3/1m")
    ratelimits.take("messages", account=1, address="192.0.2.1")
    ratelimits.take("messages", account=1, address="192.0.2.1")
    with pytest.raises(RateLimited, match="per account"):
        ratelimits.take("messages", account=1, address="192.0.2.1")
    # The account's refusals took nothing from the address: two more fit there.
    ratelimits.take("messages", account=2, address="192.0.2.1")
    with pytest.raises(RateLimited, match="per address") as caught:
        ratelimits.take("messages", account=3, address="192.0.2.1")
    assert caught.value.retry_after == pytest.approx(20.0)
    clock.now += 20.0
    ratelimits.take("messages", account=3, address="192.0.2.1")


def test_unknown_sides_are_not_limited() -> None:
    ratelimits, _ = limits(handle_lookup_per_account="1/1h")
    for _ in range(5):
        ratelimits.take("handle_lookup", address="192.0.2.1")  # no account: no limit
    ratelimits.take("handle_lookup", account=7)
    with pytest.raises(RateLimited):
        ratelimits.take("handle_lookup", account=7)


def test_refund_and_charge() -> None:
    ratelimits, _ = limits(media_bytes_per_account="100/1h")
    ratelimits.take("media_bytes", account=1, cost=100)
    ratelimits.refund("media_bytes", account=1, cost=40)
    ratelimits.take("media_bytes", account=1, cost=40)
    ratelimits.charge("media_bytes", account=1, cost=500)  # never refused: into debt
    with pytest.raises(RateLimited) as caught:
        ratelimits.take("media_bytes", account=1, cost=1)
    assert caught.value.retry_after == pytest.approx(501 * 36.0)


def test_ipv6_addresses_share_a_bucket_per_64() -> None:
    ratelimits, _ = limits(register_per_address="1/1h")
    ratelimits.take("register", address="2001:db8:1:2::1")
    with pytest.raises(RateLimited):
        ratelimits.take("register", address="2001:db8:1:2:ffff::9")
    ratelimits.take("register", address="2001:db8:1:3::1")
    ratelimits.take("register", address="192.0.2.1")


def test_refusals_are_counted_for_metrics_per_bucket() -> None:
    ratelimits, _ = limits(reports_per_account="1/1d")
    ratelimits.take("reports", account=1)
    for _ in range(3):
        with pytest.raises(RateLimited):
            ratelimits.take("reports", account=1)
    lines = ratelimits.prometheus()
    assert lines[0] == "# TYPE chatd_ratelimited_total counter"
    assert 'chatd_ratelimited_total{bucket="reports"} 3' in lines
    assert 'chatd_ratelimited_total{bucket="messages"} 0' in lines
    assert len(lines) == 1 + len(BUCKETS)
