"""`RateLimits`: the named token buckets of `[ratelimits]`, per account and per address.

One call for every limited operation: `take("messages", account=user_id, address=addr)`
raises `RateLimited` (429 with Retry-After; a WebSocket `error` frame with
`retry_after`) or takes the cost from both buckets. Both sides are checked before
either is charged, so a refusal costs nothing. The buckets live in this process: each
shard limits what reaches it (docs/privacy.md, "Rate limits").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import trio

from chatd.config import RateLimitsConfig
from chatd.domain.addresses import rate_key
from chatd.domain.ratelimit import BucketLimiter, Rate
from chatd.errors import NotFound, RateLimited

#: The buckets' names, as routes use them (every one is configured in RateLimitsConfig).
BUCKETS = ("messages", "message_bytes", "new_conversations", "group_create", "group_add",
           "handle_lookup", "media_bytes", "keys_claim", "to_device", "reports", "login",
           "register", "email_verify", "email_links", "sealed_send")


class RateLimits:
    def __init__(self, config: RateLimitsConfig,
                 now: Callable[[], float] = trio.current_time) -> None:
        self._now = now
        self._limiters: dict[str, tuple[BucketLimiter | None, BucketLimiter | None]] = {
            bucket: (_limiter(account), _limiter(address))
            for bucket, (account, address) in config.rules().items()}
        #: Refusals per bucket, for /metrics.
        self.refused: dict[str, int] = dict.fromkeys(self._limiters, 0)

    def take(self, bucket: str, *, account: int | str | None = None,
             address: str | None = None, cost: float = 1.0) -> None:
        """Charge `cost` to the account's and the address's bucket (either may be None:
        not known, or not limited), or raise `RateLimited` and charge nothing. `account`
        is a user id, or for logins the normalised handle; `address` the client's
        (IPv6 ones share a bucket per /64)."""
        by_account, by_address = self._limiters[bucket]
        address = None if address is None else rate_key(address)
        now = self._now()
        charged = [(side, limiter, key) for side, limiter, key in
                   (("account", by_account, None if account is None else str(account)),
                    ("address", by_address, address))
                   if limiter is not None and key is not None]
        waits = [(limiter.wait(key, cost, now), side, limiter)
                 for side, limiter, key in charged]
        wait, side, limiter = max(waits, default=(0.0, "", None), key=lambda w: w[0])
        if wait > 0 and limiter is not None:
            self.refused[bucket] += 1
            raise RateLimited(f"rate limit {bucket!r} reached ({limiter.rate} per {side}); "
                              f"retry in {math.ceil(wait)} s", retry_after=wait)
        for _side, limiter_, key in charged:
            limiter_.take(key, cost, now)

    @contextmanager
    def charging_unknown_users(self, *, account: int, address: str | None) -> Iterator[None]:
        """Naming a user who does not exist (GET /users/{id}, a block, a new chat or a
        group's members) costs a `handle_lookup` token, as looking up a handle does:
        user ids carry their creation time, so without it walking ids would list the
        server's users (and their handles, often phone numbers) for free. Past the
        limit, the 404 becomes the 429. Finding someone who exists costs nothing."""
        try:
            yield
        except NotFound as exc:
            if exc.code == "unknown_user":
                self.take("handle_lookup", account=account, address=address)
            raise

    def charge(self, bucket: str, *, account: int | str | None = None,
               address: str | None = None, cost: float) -> None:
        """Charge `cost` without refusing (the bucket may go into debt, repaid at its
        rate): for what is only known once done, such as an upload of unknown length."""
        by_account, by_address = self._limiters[bucket]
        address = None if address is None else rate_key(address)
        now = self._now()
        if by_account is not None and account is not None:
            by_account.charge(str(account), cost, now)
        if by_address is not None and address is not None:
            by_address.charge(address, cost, now)

    def refund(self, bucket: str, *, account: int | str | None = None,
               address: str | None = None, cost: float = 1.0) -> None:
        """Give back a take whose operation did not happen (e.g. the direct conversation
        existed already)."""
        by_account, by_address = self._limiters[bucket]
        address = None if address is None else rate_key(address)
        now = self._now()
        if by_account is not None and account is not None:
            by_account.refund(str(account), cost, now)
        if by_address is not None and address is not None:
            by_address.refund(address, cost, now)

    def prometheus(self) -> list[str]:
        lines = ["# TYPE chatd_ratelimited_total counter"]
        lines += [f'chatd_ratelimited_total{{bucket="{bucket}"}} {count}'
                  for bucket, count in self.refused.items()]
        return lines


def _limiter(rate: Rate | None) -> BucketLimiter | None:
    return None if rate is None else BucketLimiter(rate)
