from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from chatd.domain.models import User
from chatd.errors import BadRequest, ChatdError
from chatd.pending import Pending
from chatd.storage import Batch, GroupCommitter, Store, records
from chatd.storage.errors import (
    CommandFailed,
    NotReplicated,
    ShuttingDown,
    StorageError,
    UnstorableValue,
    WriteFailed,
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store.open(str(tmp_path))
    yield store
    store.close()


def put_user(user_id: int) -> object:
    def apply(batch: Batch) -> int:
        batch.put(records.USERS, user_id, User(user_id, f"u{user_id}", "U", b"", 0))
        return user_id
    return apply


async def test_concurrent_commands_share_batches(store: Store) -> None:
    committer = GroupCommitter(store)
    results: list[int] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)

        async def submit(user_id: int) -> None:
            results.append(await committer.submit(put_user(user_id)))  # type: ignore[arg-type]

        async with trio.open_nursery() as producers:
            for user_id in range(1, 201):
                producers.start_soon(submit, user_id)
        committer.close()
    stats = committer.statistics()
    assert sorted(results) == list(range(1, 201))
    assert stats.commands_committed == 200
    assert stats.batches_written < 20 and stats.mean_batch > 10
    assert all(store.get(records.USERS, user_id) is not None for user_id in range(1, 201))


async def test_a_refused_command_does_not_affect_its_batch(store: Store) -> None:
    committer = GroupCommitter(store)

    def refuse(batch: Batch) -> None:
        batch.put(records.USERS, 666, User(666, "bad", "B", b"", 0))
        raise BadRequest("no")

    outcomes: dict[str, object] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)

        async def run(name: str, apply: object) -> None:
            try:
                outcomes[name] = await committer.submit(apply)  # type: ignore[arg-type]
            except BadRequest as exc:
                outcomes[name] = exc

        async with trio.open_nursery() as producers:
            producers.start_soon(run, "a", put_user(1))
            producers.start_soon(run, "bad", refuse)
            producers.start_soon(run, "b", put_user(2))
        committer.close()
    assert outcomes["a"] == 1 and outcomes["b"] == 2
    assert isinstance(outcomes["bad"], BadRequest)
    # What the refused command had written before it failed was taken back out.
    assert store.get(records.USERS, 666) is None


async def test_one_failing_command_is_refused_alone_and_the_rest_of_its_batch_lands(
        store: Store) -> None:
    """A bug in one command, or a value that cannot be encoded, refused the whole shared
    batch (other users' sends failed with it). Now that command alone is refused; the
    ones before it land in its batch, the ones after it in the next, after in-memory
    state was reloaded from disk."""
    committer = GroupCommitter(store)
    resets: list[int] = []
    committer.on_reload_needed(lambda: resets.append(committer.statistics().batches_written))
    half_done: list[int] = []

    def buggy(batch: Batch) -> None:
        batch.put(records.USERS, 666, User(666, "bad", "B", b"", 0))
        half_done.append(1)  # in-memory state changed before the failure
        raise KeyError("oops")

    def unstorable(batch: Batch) -> None:
        batch.put(records.USERS, 667, User(667, "bad", "B", b"", 0))
        batch.put(records.USERS, 668, User(668, "surrogate", "\ud800", b"", 0))

    outcomes: dict[str, object] = {}

    async def run(name: str, apply: object) -> None:
        try:
            outcomes[name] = await committer.submit(apply)  # type: ignore[arg-type]
        except (ChatdError, StorageError) as exc:
            outcomes[name] = exc

    async with trio.open_nursery() as nursery:
        # Queued before the committer runs, so that all of them meet in one batch.
        async with trio.open_nursery() as producers:
            for name, apply in (("a", put_user(1)), ("bug", buggy), ("b", put_user(2)),
                                ("unstorable", unstorable), ("c", put_user(3))):
                producers.start_soon(run, name, apply)
                await trio.testing.wait_all_tasks_blocked()
            await nursery.start(committer.run)
        committer.close()
    assert (outcomes["a"], outcomes["b"], outcomes["c"]) == (1, 2, 3)
    bug, bad_value = outcomes["bug"], outcomes["unstorable"]
    assert isinstance(bug, CommandFailed)
    assert isinstance(bad_value, UnstorableValue)
    assert all(store.get(records.USERS, user_id) is not None for user_id in (1, 2, 3))
    assert all(store.get(records.USERS, user_id) is None for user_id in (666, 667, 668))
    # State was reloaded after each failure, once what came before it had landed.
    assert resets == [1, 2]


class FailingStore(Store):
    """A real store whose next write fails as a full disk would."""

    fail_next = True

    def write(self, batch: Batch) -> None:
        if self.fail_next:
            self.fail_next = False
            raise OSError(28, "No space left on device")
        super().write(batch)


async def test_a_failed_write_acknowledges_nobody_and_resets_state(tmp_path: Path) -> None:
    real = Store.open(str(tmp_path))
    real.close()
    store = FailingStore.open(str(tmp_path))
    committer = GroupCommitter(store)
    resets: list[bool] = []
    committer.on_reload_needed(lambda: resets.append(True))
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(committer.run)
            with pytest.raises(WriteFailed):
                await committer.submit(put_user(1))  # type: ignore[arg-type]
            assert await committer.submit(put_user(2)) == 2  # type: ignore[arg-type]
            committer.close()
        assert resets == [True]
        assert store.get(records.USERS, 1) is None and store.get(records.USERS, 2) is not None
        assert committer.statistics().failed_writes == 1
    finally:
        store.close()


async def test_closed_committer_drains_then_refuses(store: Store) -> None:
    committer = GroupCommitter(store)
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        assert await committer.submit(put_user(1)) == 1  # type: ignore[arg-type]
        committer.close()
    with pytest.raises(ShuttingDown):
        await committer.submit(put_user(2))  # type: ignore[arg-type]


class HeldGate:
    """Replication as the committer sees it: each batch with a ranged command gets a
    shipment the test settles (the real one is chatd.replication.shipper.Shipper)."""

    def __init__(self) -> None:
        self.shipments: list[Pending[frozenset[str]]] = []
        self.held: dict[str, list[Callable[[], None]]] = {}

    def range_of(self, conversation_id: int) -> str | None:
        return f"r{conversation_id}"

    def ship(self, batch: Batch, ranges: set[str]) -> Pending[frozenset[str]] | None:
        if not ranges:
            return None
        shipment: Pending[frozenset[str]] = Pending()
        self.shipments.append(shipment)
        return shipment

    def hold(self, range_: str, callbacks: list[Callable[[], None]]) -> None:
        self.held.setdefault(range_, []).extend(callbacks)


def noting(name: str, seen: list[str]) -> Callable[[Batch], str]:
    def apply(batch: Batch) -> str:
        batch.put(records.USERS, len(seen) + 1, User(len(seen) + 1, name, "U", b"", 0))
        batch.after_commit.append(lambda: seen.append(name))
        return name
    return apply


async def test_replicated_commands_wait_for_their_range_and_others_do_not(
        store: Store, nursery: trio.Nursery) -> None:
    committer = GroupCommitter(store)
    gate = HeldGate()
    committer.set_gate(gate)
    await nursery.start(committer.run)
    published: list[str] = []
    ranged = committer.enqueue(noting("ranged", published), conversation_id=1)
    plain = committer.enqueue(noting("plain", published))
    await trio.testing.wait_all_tasks_blocked()
    assert plain.finished and plain.result == "plain" and not ranged.finished
    assert published == ["plain"]  # the ranged command's callback waits too
    gate.shipments[0].set_result(frozenset())
    assert await ranged.wait() == "ranged"
    assert published == ["plain", "ranged"]


async def test_a_ranges_batches_are_acknowledged_in_the_order_they_were_written(
        store: Store, nursery: trio.Nursery) -> None:
    committer = GroupCommitter(store)
    gate = HeldGate()
    committer.set_gate(gate)
    await nursery.start(committer.run)
    published: list[str] = []
    first = committer.enqueue(noting("first", published), conversation_id=1)
    await trio.testing.wait_all_tasks_blocked()
    second = committer.enqueue(noting("second", published), conversation_id=1)
    await trio.testing.wait_all_tasks_blocked()
    assert len(gate.shipments) == 2
    gate.shipments[1].set_result(frozenset())  # the later batch's replica answers first
    await trio.testing.wait_all_tasks_blocked()
    assert not second.finished and published == []
    gate.shipments[0].set_result(frozenset())
    await second.wait()
    assert first.finished and published == ["first", "second"]


async def test_a_waiting_range_holds_up_only_itself(store: Store,
                                                    nursery: trio.Nursery) -> None:
    committer = GroupCommitter(store)
    gate = HeldGate()
    committer.set_gate(gate)
    await nursery.start(committer.run)
    published: list[str] = []
    slow = committer.enqueue(noting("slow", published), conversation_id=1)
    await trio.testing.wait_all_tasks_blocked()
    quick = committer.enqueue(noting("quick", published), conversation_id=2)
    await trio.testing.wait_all_tasks_blocked()
    gate.shipments[1].set_result(frozenset())
    assert await quick.wait() == "quick"
    assert not slow.finished and published == ["quick"]
    gate.shipments[0].set_result(frozenset())
    assert await slow.wait() == "slow"


async def test_a_range_that_failed_refuses_its_commands_and_holds_their_callbacks(
        store: Store, nursery: trio.Nursery) -> None:
    committer = GroupCommitter(store)
    gate = HeldGate()
    committer.set_gate(gate)
    await nursery.start(committer.run)
    published: list[str] = []
    lost = committer.enqueue(noting("lost", published), conversation_id=1)
    kept = committer.enqueue(noting("kept", published), conversation_id=2)
    await trio.testing.wait_all_tasks_blocked()
    [shipment] = gate.shipments
    shipment.set_result(frozenset({"r1"}))
    assert await kept.wait() == "kept"
    with pytest.raises(NotReplicated):
        await lost.wait()
    assert published == ["kept"]
    # Durable here all the same: the range's recovery publishes it (or drops it, if
    # another shard took the range over).
    assert store.get(records.USERS, 1) is not None
    [callback] = gate.held["r1"]
    callback()
    assert published == ["kept", "lost"]


async def test_a_cancelled_committer_fails_what_it_did_not_run(store: Store) -> None:
    """Cancelled rather than closed (a task tree torn down), the committer tells every
    command it never ran that it will not: their waiters (`submit` waits shielded) get
    ShuttingDown instead of waiting for ever, and no command is taken after."""
    committer = GroupCommitter(store)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(committer.run)
            # The committer is parked; cancelling aborts its wait at once, so the command
            # queued after it is never run.
            nursery.cancel_scope.cancel()
            command = committer.enqueue(put_user(1))
    assert command.finished and isinstance(command.error, ShuttingDown)
    assert store.get(records.USERS, 1) is None
    with pytest.raises(ShuttingDown):
        committer.enqueue(put_user(2))
