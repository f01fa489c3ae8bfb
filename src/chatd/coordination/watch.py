"""A watch on a key prefix that survives dropped streams and etcd restarts.

The contract:

- Events come in revision order, each once, from `start_revision` on. To follow a
  prefix from a listing, start at `get_prefix`'s revision + 1.
- When the stream drops (etcd restarted or stopped, the connection broke, an endpoint
  went quiet past `idle_timeout`) the watch dials again, every endpoint in turn, backing
  off up to a second between rounds, and resumes at the last event's revision + 1. It
  never gives up on an unreachable etcd by itself: the caller bounds it with a cancel
  scope, or learns of the outage elsewhere (its `LeaseKeeper`).
- If etcd has compacted the history the watch would resume from, the events in between
  are gone and iteration raises `WatchCompacted(revision)`: the caller re-lists the
  prefix (its state may have changed in ways no event will tell) and starts a new watch
  at the listing's revision + 1. The watch is finished after that.
- Without `idle_timeout`, a paused or partitioned etcd leaves the stream open and
  silent for good; with it, a stream silent that long is redialled. etcd sends nothing
  on a quiet prefix, so a healthy but quiet watch is redialled too: cheap and lossless.

It is an async iterator and an async context manager rather than an async generator:
`async with etcd.watch_prefix(...) as events: async for event in events: ...` closes the
stream on exit, and no `yield` ever sits inside a cancel scope or an open response.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import trio

from chatd.coordination import wire
from chatd.coordination.errors import EtcdError, EtcdUnavailable, WatchCompacted
from chatd.coordination.gateway import Gateway, Stream
from chatd.coordination.wire import WatchEvent

#: The first pause before dialling again after a failed dial, doubled up to the cap: an
#: etcd restart takes about a second, and a tight loop would only burn CPU.
RETRY_FIRST = 0.05
RETRY_CAP = 1.0

#: Words of a cancel reason that mean "authenticate again" (etcd puts the gRPC status in
#: the reason's text: "rpc error: code = Unauthenticated desc = ... invalid auth token").
_AUTH_REASONS = ("Unauthenticated", "invalid auth token")


class Watch:
    """The events of `EtcdClient.watch_prefix`; see the module's contract."""

    def __init__(self, gateway: Gateway, prefix: str, *, start_revision: int,
                 idle_timeout: float | None = None) -> None:
        if start_revision < 1:
            raise ValueError(f"a watch starts at revision 1 or later, not {start_revision}")
        if idle_timeout is not None and not idle_timeout > 0:
            raise ValueError(f"idle_timeout must be positive, not {idle_timeout!r}")
        self._gateway = gateway
        self._prefix = prefix
        self._idle_timeout = idle_timeout
        #: The revision the watch resumes at: the last event's + 1.
        self.next_revision = start_revision
        #: How many times a stream was opened (1 for a watch that never dropped).
        self.streams_opened = 0
        self._pending: deque[WatchEvent] = deque()
        self._stream: Stream | None = None
        self._retry = RETRY_FIRST
        self._finished = False

    def __aiter__(self) -> Watch:
        return self

    async def __aenter__(self) -> Watch:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._finished = True
        await self._drop()

    async def __anext__(self) -> WatchEvent:
        while not self._pending:
            if self._finished:
                raise StopAsyncIteration
            if self._stream is None:
                await self._open()
                continue
            received = await self._stream.next_object(self._idle_timeout)
            if received is None:
                # Dropped or silent: dial again at once; a dial that fails backs off.
                await self._drop()
            else:
                await self._take(received, self._stream)
        event = self._pending.popleft()
        self.next_revision = event.revision + 1
        return event

    async def _open(self) -> None:
        body = {"create_request": {**wire.prefix_range(self._prefix),
                                   "start_revision": str(self.next_revision)}}
        try:
            stream = await self._gateway.open_stream("/v3/watch", body)
        except EtcdUnavailable:
            await self._back_off()
            return
        self._stream = stream
        self.streams_opened += 1
        await self._take(stream.first, stream)

    async def _take(self, received: Mapping[str, Any], stream: Stream) -> None:
        """Act on one object of the stream: queue its events, or end the stream."""
        refusal = wire.error_of(received)
        if refusal is not None:
            # A stream broken on etcd's side (it is stopping, the member lost its
            # leader, the token expired): resume elsewhere or later.
            if self._gateway.is_auth_failure(refusal):
                await self._renew_token(stream)
            await self._drop()
            await self._back_off()
            return
        result = wire.mapping(received.get("result", {}), "a watch answer")
        if result.get("canceled") is True:
            await self._cancelled(result, stream)
            return
        self._retry = RETRY_FIRST  # this stream works
        self._pending.extend(wire.parse_watch_events(result))

    async def _cancelled(self, result: Mapping[str, Any], stream: Stream) -> None:
        await self._drop()
        compacted = wire.integer(result.get("compact_revision"), "compact_revision")
        if compacted > 0:
            self._finished = True
            raise WatchCompacted(compacted)
        reason = str(result.get("cancel_reason", ""))
        if self._gateway.user is not None and any(word in reason for word in _AUTH_REASONS):
            await self._renew_token(stream)
            await self._back_off()
            return
        self._finished = True
        raise EtcdError(f"etcd cancelled the watch on {self._prefix!r}: "
                        f"{reason or 'no reason given'}")

    async def _renew_token(self, stream: Stream) -> None:
        """A new token for the next dial. Bad credentials are raised; an etcd that does
        not answer is not (the next dial authenticates when it does)."""
        with contextlib.suppress(EtcdUnavailable):
            await self._gateway.renew_token(stale=stream.token)

    async def _back_off(self) -> None:
        await trio.sleep(self._retry)
        self._retry = min(self._retry * 2, RETRY_CAP)

    async def _drop(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await stream.aclose()
