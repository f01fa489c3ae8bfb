"""`LeaseKeeper`: hold an etcd lease, and know for certain when it may no longer be held.

A shard that owns something in etcd holds it under a lease: if the shard dies, etcd
ends the lease when its TTL runs out and another shard may take over. The danger is
the shard that is alive but cut off from etcd: etcd expires its lease and hands its
work to another while it still acts. The fencing rule prevents that:

    held() is true only while now < (send time of the last keepalive that succeeded)
                                     + TTL - margin

etcd restarts the TTL when it *receives* a keepalive, which is after we sent it, so the
send time (not the answer's arrival, which may come much later) gives a lower bound on
when etcd can expire the lease. The margin is for what that bound does not cover: the
shard checks `held()` and then acts, and the act lands a little later; the two clocks
may run at slightly different rates; Trio may run this task late on a busy box. A shard
must stop acting as owner as soon as `held()` is false (or `on_lost` is called).

Keepalives go every TTL/3, so two may fail before the lease is in danger. While etcd
does not answer, the keeper retries quickly; when the deadline passes, or etcd says the
lease is gone, the lease is lost: `on_lost()` is called and `lease_id` becomes None.
Once etcd answers again the keeper revokes the old lease (etcd may have kept it alive
across its own restart; we promised to stop trusting it, and revoking frees its keys for
whoever takes over), grants a new one and calls `on_regained(new_lease_id)`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import trio

from chatd.coordination.errors import CoordinationError
from chatd.coordination.etcd import EtcdClient

log = logging.getLogger(__name__)

#: How soon a failed keepalive or grant is tried again, at most: well inside TTL/3.
RETRY_INTERVAL = 0.25


@dataclass(frozen=True)
class LeaseStatistics:
    lease_id: int | None
    held: bool
    #: The clock reading until which the lease may be acted on (-inf when not held).
    held_until: float
    keepalives_sent: int
    keepalives_failed: int
    losses: int


class LeaseKeeper:
    """Grant a lease of `ttl` seconds and keep it alive: `lease_id = await
    nursery.start(keeper.run)` returns once the first lease is granted.

    `margin` (seconds, default TTL/5) is subtracted from every validity window (see the
    module docstring); it must leave room for the keepalive interval, TTL/3. `clock` is
    the time source of `held()`; it must advance like Trio's (a test's `MockClock`).
    The callbacks run in the keeper's task and must not block.
    """

    def __init__(self, client: EtcdClient, ttl: int, *, margin: float | None = None,
                 clock: Callable[[], float] = trio.current_time,
                 on_lost: Callable[[], None] | None = None,
                 on_regained: Callable[[int], None] | None = None) -> None:
        if ttl < 1:
            raise ValueError(f"a lease TTL is at least 1 second, not {ttl}")
        margin = ttl / 5 if margin is None else margin
        if not 0 <= margin < ttl - ttl / 3:
            raise ValueError(f"margin must be at least 0 and below 2/3 of the TTL "
                             f"({ttl} s), so a keepalive fits in before the deadline; "
                             f"not {margin}")
        self._client = client
        self._ttl = ttl
        self._margin = margin
        self._clock = clock
        self._on_lost = on_lost
        self._on_regained = on_regained
        self._lease: int | None = None
        self._granted_ttl = ttl
        self._held_until = -math.inf
        self._renewed_at = -math.inf  # when the last successful grant or keepalive was sent
        self._stale: int | None = None  # a lost lease to revoke before the next grant
        self._sent = 0
        self._failed = 0
        self._losses = 0

    @property
    def lease_id(self) -> int | None:
        """The lease held now, or None between a loss and the next grant."""
        return self._lease

    def held(self) -> bool:
        """Whether the lease may be acted on now (the fencing rule, module docstring)."""
        return self._lease is not None and self._clock() < self._held_until

    def statistics(self) -> LeaseStatistics:
        return LeaseStatistics(self._lease, self.held(), self._held_until, self._sent,
                               self._failed, self._losses)

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        """Hold a lease until cancelled; then revoke it (bounded by the client's timeout),
        so whoever takes over need not wait for the TTL to run out."""
        try:
            lease = await self._acquire()
            task_status.started(lease)
            while True:
                await self._keep()
                self._lose()
                lease = await self._acquire()
                if self._on_regained is not None:
                    self._on_regained(lease)
        finally:
            await self._release()

    async def _release(self) -> None:
        lease = self._lease if self._lease is not None else self._stale
        self._lease = None
        self._held_until = -math.inf
        if lease is None:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(self._client.gateway.timeout):
            try:
                await self._client.revoke(lease)
            except CoordinationError as error:
                log.warning("could not revoke etcd lease %x on the way out (it will expire "
                            "by itself): %s", lease, error)

    async def _acquire(self) -> int:
        """Revoke the lost lease if any, then grant a new one, retrying until etcd
        answers both."""
        while True:
            try:
                if self._stale is not None:
                    await self._client.revoke(self._stale)
                    self._stale = None
                sent_at = self._clock()
                lease, granted_ttl = await self._client.grant_with_ttl(self._ttl)
            except CoordinationError as error:
                log.warning("cannot get an etcd lease yet: %s", error)
                await trio.sleep(RETRY_INTERVAL)
                continue
            self._lease = lease
            self._granted_ttl = granted_ttl
            self._renewed_at = sent_at
            self._held_until = sent_at + granted_ttl - self._margin
            return lease

    async def _keep(self) -> None:
        """Keep the lease alive; return when it is lost."""
        while True:
            await self._sleep_until(self._renewed_at + self._granted_ttl / 3)
            with trio.move_on_at(self._trio_time(self._held_until)):
                while not await self._renew():  # noqa: ASYNC110  # a retry, not a wait for an event
                    await trio.sleep(RETRY_INTERVAL)
                if not self.held():
                    return  # etcd said the lease is gone, or its answer came too late
                continue
            return  # the deadline passed with no renewal

    async def _renew(self) -> bool:
        """One keepalive. True when etcd answered (the lease renewed, or gone: then the
        deadline is -inf); False when it should be tried again."""
        assert self._lease is not None
        sent_at = self._clock()
        self._sent += 1
        try:
            ttl = await self._client.keepalive(self._lease)
        except CoordinationError as error:
            self._failed += 1
            log.warning("etcd lease %x: keepalive failed: %s", self._lease, error)
            return False
        if ttl <= 0:
            log.warning("etcd says lease %x is gone", self._lease)
            self._held_until = -math.inf
            return True
        self._granted_ttl = ttl
        self._renewed_at = sent_at
        self._held_until = sent_at + ttl - self._margin
        return True

    def _lose(self) -> None:
        log.warning("etcd lease %x lost: not acting on it any more", self._lease)
        self._stale = self._lease
        self._lease = None
        self._held_until = -math.inf
        self._losses += 1
        if self._on_lost is not None:
            self._on_lost()

    def _trio_time(self, instant: float) -> float:
        """`instant` on `self._clock` as a Trio deadline."""
        return trio.current_time() + (instant - self._clock())

    async def _sleep_until(self, instant: float) -> None:
        await trio.sleep_until(self._trio_time(instant))
