from __future__ import annotations

import pytest

from chatd.domain.models import User
from chatd.errors import BadRequest, ChatdError, Unavailable
from chatd.pending import Pending
from chatd.services.commands import Commands
from chatd.storage import Batch, records
from tests.services.conftest import Shard


def unstorable(batch: Batch) -> None:
    batch.put(records.USERS, 1, User(1, "x", "\ud800", b"", 0))


async def test_storage_errors_reach_clients_in_their_terms(shard: Shard) -> None:
    commands = Commands(shard.services.committer)
    with pytest.raises(BadRequest) as refused:
        await commands.submit(unstorable)
    assert refused.value.code == "unstorable_value"
    # Answered by callback: the error is translated before the caller's callback sees it.
    seen: list[BaseException | None] = []
    pending = commands.enqueue(unstorable)
    pending.add_done_callback(lambda done: seen.append(done.error))
    with pytest.raises(BadRequest):
        await pending.wait()
    assert isinstance(seen[0], BadRequest)

    def bug(batch: Batch) -> None:
        raise KeyError("a bug")

    with pytest.raises(ChatdError) as failed:
        await commands.submit(bug)
    assert failed.value.status == 500
    shard.services.committer.close()
    with pytest.raises(Unavailable) as closed:
        commands.enqueue(unstorable)
    assert closed.value.code == "shutting_down"
    assert isinstance(pending, Pending)
