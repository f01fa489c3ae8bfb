"""The checker's checks, fed hand-made histories: a sound one passes, and each kind of
bad one is caught (a check that cannot fail would pass every fault-injection run)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.cluster.history import Answer, History, Intent, RangeReport, check

SHARDS = ("a", "b", "c")
CONVERSATION = "100"
ALICE, BOB = "11", "22"


def message(seq: int, message_id: str, sender: str, client_msg_id: str,
            body: str | dict[str, Any]) -> dict[str, Any]:
    return {"conversation_id": CONVERSATION, "seq": seq, "message_id": message_id,
            "sender_id": sender, "client_msg_id": client_msg_id, "body": body}


def sound_history() -> History:
    """A group whose seq 1 is its creation; three sends: two acknowledged (one of them
    twice, with the same answer), one never acknowledged and not written; reads, a live
    frame, final reads through every shard that agree, and ranges that agree."""
    history = History(shards=SHARDS)
    created = message(1, "m1", ALICE, "", {"event": "group_created", "name": "g"})
    first = Intent(CONVERSATION, "s0-0", ALICE, "s0-0 from alice")
    second = Intent(CONVERSATION, "s1-0", BOB, "s1-0 from bob")
    lost_in_flight = Intent(CONVERSATION, "s1-1", BOB, "s1-1 from bob")
    for intent in (first, second, lost_in_flight):
        history.intend(intent)
    history.acknowledged(first, Answer(2, "m2", "a"))
    history.acknowledged(first, Answer(2, "m2", "b"))  # a retry, the same answer
    history.acknowledged(second, Answer(3, "m3", "c"))
    log = [created, message(2, "m2", ALICE, "s0-0", "s0-0 from alice"),
           message(3, "m3", BOB, "s1-0", "s1-0 from bob")]
    history.saw(log[:2], "read a")
    history.saw(log[2:], "live b")
    # Alice's socket: seq 2 is hers, so it never came to her; it died after seq 3.
    alice_live = history.open_stream("live b", ALICE)
    for seen in (log[0], log[2]):
        alice_live.received(seen)
    alice_live.ended = True
    # Bob's socket got seq 1 and died.
    bob_live = history.open_stream("live a", BOB)
    bob_live.received(log[0])
    bob_live.ended = True
    for shard in SHARDS:
        history.read_finally(CONVERSATION, shard, log)
    history.ranges = [RangeReport(shard, name, owner, 3)
                      for shard in SHARDS for name, owner in (("a", "a"), ("b", "c"))]
    return history


def test_a_sound_history_passes() -> None:
    history = sound_history()
    assert check(history) == []
    counts = history.counts()
    assert (counts["sends"], counts["acks"], counts["indeterminate"],
            counts["retried_acks"]) == (3, 2, 1, 1)


def test_a_socket_open_at_the_end_that_got_everything_passes() -> None:
    history = sound_history()
    stream = history.open_stream("live c", BOB)  # never ended: open at the end
    for seq in (2, 3):  # caught up from seq 2; seq 3 is his own, and came anyway
        stream.received(message(seq, f"m{seq}", ALICE, "", ""))
    assert check(history) == []


def _lose_an_acknowledged_send(history: History) -> None:
    log = history.final[(CONVERSATION, "b")]
    history.final[(CONVERSATION, "b")] = [log[0], log[1]]  # seq 3 is gone


def _duplicate_a_send(history: History) -> None:
    # Bob's acknowledged send is written again at seq 4, under another message id.
    for shard in SHARDS:
        log = [_as_message(seen) for seen in history.final[(CONVERSATION, shard)]]
        history.read_finally(CONVERSATION, shard,
                             [*log, message(4, "m4", BOB, "s1-0", "s1-0 from bob")])


def _leave_a_gap(history: History) -> None:
    # Bob's indeterminate send landed at seq 5: nothing is at 4.
    for shard in SHARDS:
        log = [_as_message(seen) for seen in history.final[(CONVERSATION, shard)]]
        history.read_finally(CONVERSATION, shard,
                             [*log, message(5, "m5", BOB, "s1-1", "s1-1 from bob")])


def _renumber_a_message(history: History) -> None:
    # Every shard serves Bob's acknowledged seq 3 at seq 4.
    for shard in SHARDS:
        log = [_as_message(seen) for seen in history.final[(CONVERSATION, shard)]]
        log[2]["seq"] = 4
        history.read_finally(CONVERSATION, shard, log)


def _show_two_messages_at_one_seq(history: History) -> None:
    # A live frame during the run showed another message at seq 3 (the final reads are
    # sound: only the record of what clients saw can catch it).
    history.saw([message(3, "m9", ALICE, "s0-9", "something else")], "live c")


def _answer_a_retry_differently(history: History) -> None:
    intent = history.intents[(CONVERSATION, ALICE, "s0-0")]
    history.acknowledged(intent, Answer(4, "m9", "c"))


def _acknowledge_at_another_seq(history: History) -> None:
    intent = history.intents[(CONVERSATION, BOB, "s1-0")]
    history.answers[intent.key] = [Answer(7, "m3", "a")]


def _write_a_phantom(history: History) -> None:
    for shard in SHARDS:
        log = [_as_message(seen) for seen in history.final[(CONVERSATION, shard)]]
        history.read_finally(CONVERSATION, shard,
                             [*log, message(4, "m4", BOB, "never-sent", "boo")])


def _serve_different_logs(history: History) -> None:
    log = [_as_message(seen) for seen in history.final[(CONVERSATION, "c")]]
    history.read_finally(CONVERSATION, "c",
                         [*log, message(4, "m4", BOB, "s1-1", "s1-1 from bob")])


def _skip_a_final_read(history: History) -> None:
    del history.final[(CONVERSATION, "a")]


def _refuse_a_send(history: History) -> None:
    history.refused(history.intents[(CONVERSATION, BOB, "s1-1")], 404,
                    "unknown_conversation")


def _disagree_on_an_owner(history: History) -> None:
    history.ranges[-1] = RangeReport("c", "b", "b", 4)


def _deliver_out_of_order(history: History) -> None:
    stream = history.open_stream("live c", BOB)
    for seq in (2, 1, 3):
        stream.received(message(seq, f"m{seq}", ALICE, "", ""))


def _leave_an_open_socket_behind(history: History) -> None:
    # Bob's socket got seq 1 and was still open at the end: 2 and 3 never came.
    history.open_stream("live a", BOB).received(
        message(1, "m1", ALICE, "", {"event": "group_created", "name": "g"}))


def _skip_a_delivery(history: History) -> None:
    # Bob's socket got seqs 1 and 3: seq 2 was Alice's, his to get.
    stream = history.open_stream("live a", BOB)
    for seq in (1, 3):
        stream.received(message(seq, f"m{seq}", ALICE, "", ""))


def _as_message(seen: Any) -> dict[str, Any]:
    return message(seen.seq, seen.message_id, seen.sender_id, seen.client_msg_id, seen.body)


@pytest.mark.parametrize(("spoil", "kinds"), [
    (_lose_an_acknowledged_send, {"lost", "diverged"}),
    (_duplicate_a_send, {"duplicated"}),
    (_leave_a_gap, {"gap"}),
    (_renumber_a_message, {"gap", "misplaced", "moved"}),
    (_show_two_messages_at_one_seq, {"conflict"}),
    (_answer_a_retry_differently, {"changed_answer"}),
    (_acknowledge_at_another_seq, {"misplaced", "moved"}),
    (_write_a_phantom, {"phantom"}),
    (_serve_different_logs, {"diverged"}),
    (_skip_a_final_read, {"unread"}),
    (_refuse_a_send, {"refused"}),
    (_disagree_on_an_owner, {"owners_disagree"}),
    (_deliver_out_of_order, {"live_order"}),
    (_skip_a_delivery, {"live_gap"}),
    (_leave_an_open_socket_behind, {"live_gap"}),
], ids=lambda value: value.__name__.strip("_") if callable(value) else "")
def test_each_bad_history_is_caught(spoil: Callable[[History], None], kinds: set[str]) -> None:
    history = sound_history()
    spoil(history)
    found = check(history)
    assert {violation.kind for violation in found} == kinds, "\n".join(map(str, found))
