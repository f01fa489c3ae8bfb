"""The services' door to the group committer: what a storage failure means to a client.

Every command a service runs goes through `Commands`, which hands it to the committer
and turns storage's own errors into the client-facing vocabulary of `chatd.errors`, both
for awaited commands (`submit`) and for those answered by callback (`enqueue`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from chatd.errors import BadRequest, ChatdError, StorageFailure, Unavailable
from chatd.pending import Pending
from chatd.storage import Batch, GroupCommitter
from chatd.storage.errors import (
    CommandFailed,
    NotReplicated,
    Overloaded,
    ShuttingDown,
    StorageError,
    UnstorableValue,
    WriteFailed,
)

T = TypeVar("T")


def client_error(error: BaseException) -> BaseException:
    """The client-facing form of a storage error (anything else passes through)."""
    if isinstance(error, UnstorableValue):
        return BadRequest(str(error), code="unstorable_value")
    if isinstance(error, WriteFailed):
        return StorageFailure("the write could not be made durable; retry")
    if isinstance(error, NotReplicated):
        return Unavailable("the conversation's replica did not confirm the write, so it "
                           "is not acknowledged; retry shortly with the same client_msg_id "
                           "(never duplicated)", code="not_acknowledged")
    if isinstance(error, Overloaded):
        return Unavailable("the server is overloaded; retry shortly", code="overloaded")
    if isinstance(error, ShuttingDown):
        return Unavailable("the server is shutting down", code="shutting_down")
    if isinstance(error, CommandFailed):
        return ChatdError("internal error; the request was not applied")
    if isinstance(error, StorageError):
        return ChatdError(f"internal storage error: {error}")
    return error


class Commands:
    def __init__(self, committer: GroupCommitter) -> None:
        self._committer = committer

    async def submit(self, apply: Callable[[Batch], T], *,
                     conversation_id: int | None = None) -> T:
        """Run `apply` in the next batch; its result once durable (and replicated, for
        a command on `conversation_id`)."""
        try:
            return await self._committer.submit(apply, conversation_id=conversation_id)
        except StorageError as exc:
            raise client_error(exc) from None

    def enqueue(self, apply: Callable[[Batch], T], *, durable: bool = True,
                conversation_id: int | None = None) -> Pending[T]:
        """Queue `apply` now (in order with other enqueued commands); the `Pending`'s
        error, if any, is already client-facing when its other callbacks run. An owner
        command names its `conversation_id`: its answer waits for the range's replica."""
        try:
            pending = self._committer.enqueue(apply, durable=durable,
                                              conversation_id=conversation_id)
        except StorageError as exc:
            raise client_error(exc) from None
        pending.translate = client_error
        return pending
