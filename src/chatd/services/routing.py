"""Where work happens, and getting it there: the service boundary of a shard.

Every conversation has an **owner shard** (the ring maps its id to a range, and the
placement says who acts for the range now: chatd/replication); every user a **home
shard** (the shard whose number their id carries: it minted the id, docs/architecture.md
"Homes"); every handle a home too (the ring maps the normalised handle), which is where
the user was registered, so a user's home is also their handle's.

`Router` runs an owner command (`chatd.protocol.owner`) on the conversation's owner:
here, by calling `OwnerApi` directly, or on a peer, as a mesh request. Both return the
same thing, a `Pending` for commands and the value for queries, so callers never know
which it was. With no peers configured (one shard), nothing here touches a network.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any, Protocol

from chatd.domain.ids import COUNTER_BITS, MAX_SHARD
from chatd.domain.ring import HashRing
from chatd.errors import ChatdError, Unavailable
from chatd.pending import Pending
from chatd.protocol import owner as ops
from chatd.replication.placement import Placement

log = logging.getLogger(__name__)


class Peers(Protocol):
    """What the router needs of the mesh (chatd.transport.mesh.Mesh provides it)."""

    def is_up(self, peer: str) -> bool: ...

    def start_request(self, peer: str, method: str, body: Any, *,
                      timeout: float | None = None) -> Pending[Any]: ...

    def post(self, peer: str, method: str, body: Any) -> bool: ...

    def prometheus(self) -> list[str]: ...


#: The codes the mesh fails a request with when the peer did not answer (down, link
#: dropped, deadline passed): to a client, the shard it needed is unreachable.
PEER_FAILURES = frozenset({"peer_unreachable", "peer_timeout"})


def unreachable(shard: str, what: str = "owner") -> Unavailable:
    return Unavailable(f"the {what} shard {shard!r} cannot be reached; retry shortly "
                       "(a retried send with the same client_msg_id is never duplicated)",
                       code=f"{what}_unreachable")


class Router:
    def __init__(self, ring: HashRing, shard: str, numbers: dict[str, int],
                 placement: Placement | None = None) -> None:
        if shard not in ring.shards:
            raise ValueError(f"shard {shard!r} is not on the ring {ring.shards}")
        self.ring = ring
        self.placement = placement or Placement(ring, 1)
        self.shard = shard
        self._by_number = {number: name for name, number in numbers.items()}
        self.peers: Peers | None = None
        self._local: Callable[[ops.OwnerCommand], Any] | None = None

    @property
    def shards(self) -> tuple[str, ...]:
        return self.ring.shards

    def attach(self, local: Callable[[ops.OwnerCommand], Any], peers: Peers | None) -> None:
        """Wire the two ways a command can go: `local` (OwnerApi.run) and the mesh."""
        self._local = local
        self.peers = peers

    # -- where --------------------------------------------------------------------------------

    def owner_of_conversation(self, conversation_id: int) -> str:
        """The shard acting as the conversation's owner now (after a failover, its
        range's replica)."""
        return self.placement.owner_of(conversation_id)

    def owns(self, conversation_id: int) -> bool:
        return self.placement.owner_of(conversation_id) == self.shard

    def home_of_user(self, user_id: int) -> str:
        """The shard that minted the id (its number is in the id's middle bits). An id
        no configured shard minted (never valid) is given to this shard, which answers
        404 for it like for any unknown user."""
        number = (user_id >> COUNTER_BITS) & MAX_SHARD
        return self._by_number.get(number, self.shard)

    def home_of_handle(self, normalised_handle: str) -> str:
        return self.ring.shard_for_text(normalised_handle)

    def is_local(self, shard: str) -> bool:
        return shard == self.shard

    # -- running owner commands ---------------------------------------------------------------

    def submit(self, command: ops.OwnerCommand) -> Pending[Any]:
        """Run a command on its conversation's owner; the `Pending` finishes with its
        answer (once durable). Commands submitted one after another reach their owner in
        that order, here or over the mesh."""
        shard = self.owner_of_conversation(command.conversation_id)
        if shard == self.shard:
            assert self._local is not None
            result = self._local(command)
            return result if isinstance(result, Pending) else Pending.done(result)
        return self.remote(shard, command)

    async def ask(self, command: ops.OwnerCommand) -> Any:
        """Run a query (or a command) on the owner and wait for its answer."""
        return await self.submit(command).wait()

    def post(self, command: ops.OwnerCommand) -> None:
        """Run a command whose answer nobody waits for (an ack, a hint): errors are
        dropped; it is lost if the owner is down, which a hint may be."""
        shard = self.owner_of_conversation(command.conversation_id)
        if shard == self.shard:
            assert self._local is not None
            with contextlib.suppress(ChatdError):
                self._local(command)
        elif self.peers is not None:
            self.peers.post(shard, command.METHOD, command.to_wire())

    async def ask_peer(self, shard: str, method: str, body: Any, *, what: str,
                       timeout: float | None = None) -> Any:  # noqa: ASYNC109  # the request's deadline, sent to the peer
        """A mesh request to `shard` (a user's home, a media's shard, …): its answer, or
        503 `<what>_unreachable` when the peer is down or does not answer in time."""
        peers = self.peers
        if peers is None or not peers.is_up(shard):
            raise unreachable(shard, what)
        try:
            return await peers.start_request(shard, method, body, timeout=timeout).wait()
        except ChatdError as exc:
            if exc.code in PEER_FAILURES:
                raise unreachable(shard, what) from None
            raise

    def remote(self, shard: str, command: ops.OwnerCommand) -> Pending[Any]:
        """Run `command` on `shard` over the mesh, whoever owns the conversation (used
        to ask every shard, `ConversationsOf`)."""
        peers = self.peers
        if peers is None or not peers.is_up(shard):
            return Pending.failed(unreachable(shard))
        call = peers.start_request(shard, command.METHOD, command.to_wire())
        decode = ops.RESULTS[command.METHOD][1]
        answer: Pending[Any] = Pending()

        def decoded(done: Pending[Any]) -> None:
            if done.error is not None:
                answer.set_error(_owner_error(shard, done.error))
                return
            try:
                answer.set_result(decode(done.result))
            except (TypeError, ValueError, KeyError, IndexError) as exc:
                log.error("shard %s answered %s with a malformed body: %r", shard,
                          command.METHOD, exc)
                answer.set_error(Unavailable(f"shard {shard!r} answered malformed data",
                                             code="owner_error"))

        call.add_done_callback(decoded)
        return answer


def _owner_error(shard: str, error: BaseException) -> BaseException:
    """An unreachable peer is the owner's unavailability to the client."""
    if isinstance(error, Unavailable) and error.code in PEER_FAILURES:
        return unreachable(shard)
    return error
