"""Owner commands and their answers survive the wire (msgpack) unchanged, and a body that
does not fit its command is refused before anything runs."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from chatd.domain.models import (
    Conversation,
    Created,
    HistoryPage,
    Member,
    Message,
    SendResult,
    Watermark,
)
from chatd.domain.targets import Annotation
from chatd.domain.unread import UncountedSeqs
from chatd.protocol import owner as ops
from chatd.protocol.mesh import Post, decode_frame, encode_frame

COMMANDS: list[ops.OwnerCommand] = [
    ops.Send(7, 1, 2, "c1", "text/plain", "hi"),
    ops.Send(7, 1, 2, "c2", "application/octet-stream", b"\x00\xff"),
    ops.Send(7, 1, 2, "c3", "text/plain", "re", [], 4, [5, 6], 2),
    ops.MarkRead(7, 1, 3, True),
    ops.Acknowledge(7, 1, 3, False),
    ops.OpenDirect(7, 1, 2),
    ops.CreateGroup(7, 1, "team", [2, 3]),
    ops.AddMembers(7, 1, [4]),
    ops.RemoveMembers(7, 1, [4]),
    ops.Promote(7, 1, [2]),
    ops.Leave(7, 1),
    ops.Rename(7, 1, "new"),
    ops.View(7, 1),
    ops.History(7, 1, -1, 10, 0, 0),
    ops.Status(7, 1, 2),
    ops.Typing(7, 1),
    ops.ReadLog(7, 1, 0, 200, 1 << 18),
    ops.ConversationsOf(0, 1, 9, 0, {7: 3}),
    ops.React(7, 1, 2, 3, "👍", False),
    ops.React(7, 1, 2, 3, "", True),
    ops.Edit(7, 1, 2, 3, "new text"),
    ops.Edit(7, 1, 2, 3, b"\x01ciphertext"),
    ops.Pin(7, 1, 2, 3, True),
    ops.EditHistory(7, 1, 3),
]


def over_the_wire(value: Any) -> Any:
    """`value` as a peer reads it: through the mesh's own frame codec (which, like any
    strict msgpack reader, takes string map keys only)."""
    frame = encode_frame({"kind": "POST", "method": "test", "body": value},
                         msgpack.Packer(use_bin_type=True))
    post = decode_frame(frame[4:])
    assert isinstance(post, Post)
    return post.body


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: type(c).__name__)
def test_every_command_round_trips(command: ops.OwnerCommand) -> None:
    assert ops.COMMANDS[command.METHOD] is type(command)
    assert type(command).from_wire(over_the_wire(command.to_wire())) == command


@pytest.mark.parametrize("body", [
    None, [], {"conversation_id": 7}, {"conversation_id": "7", "user_id": 1},
    {"conversation_id": 7, "user_id": True}, {"conversation_id": 7, "user_id": 1, "x": 2},
])
def test_a_body_that_does_not_fit_is_refused(body: Any) -> None:
    with pytest.raises(ops.WireError):
        ops.View.from_wire(body)


def test_lists_of_ids_are_checked_item_by_item() -> None:
    with pytest.raises(ops.WireError):
        ops.AddMembers.from_wire({"conversation_id": 7, "actor_id": 1, "user_ids": [1, "2"]})


def _conversation() -> Conversation:
    conv = Conversation(7, "group", "team", 1, 100, head_seq=3, last_ts=200)
    conv.members = {1: Member("admin", 1), 2: Member("member", 2)}
    conv.watermarks = {1: Watermark(3, 3), 2: Watermark(2, 1)}
    return conv


def test_results_round_trip() -> None:
    message = Message(11, 7, 3, 1, 2, "c1", "text/plain", "hi", 200)
    conv = _conversation()
    cases: list[tuple[str, Any]] = [
        (ops.Send.METHOD, SendResult(11, 7, 3, 200)),
        (ops.MarkRead.METHOD, Watermark(3, 2)),
        (ops.View.METHOD, conv),
        (ops.OpenDirect.METHOD, Created(conv, True)),
        (ops.History.METHOD, HistoryPage([message], True)),
        (ops.Status.METHOD, [(1, 3, 3), (2, 2, 1)]),
        (ops.ReadLog.METHOD, ([message], 3)),
        (ops.ConversationsOf.METHOD, ([(conv, 2)], 0)),
        (ops.Typing.METHOD, True),
    ]
    for method, result in cases:
        to_wire, from_wire = ops.RESULTS[method]
        back = from_wire(over_the_wire(to_wire(result)))
        if isinstance(result, Conversation):
            assert ops.conversation_to_wire(back) == ops.conversation_to_wire(result)
            assert list(back.members) == [1, 2]  # join order survives
        elif isinstance(result, Created):
            assert back.created is True
            assert ops.conversation_to_wire(back.conversation) == ops.conversation_to_wire(conv)
        elif method == ops.ConversationsOf.METHOD:
            rows, after = back
            assert after == 0 and [(ops.conversation_to_wire(c), s) for c, s in rows] == [
                (ops.conversation_to_wire(conv), 2)]
        else:
            assert back == result, method


def test_reactions_edits_and_pins_survive_the_wire() -> None:
    message = Message(11, 7, 3, 1, 2, "c1", "text/plain", "hi", 200)
    page = HistoryPage([message], False, {3: Annotation({"👍": (2, True), "❤️": (1, False)},
                                                        "hi, edited", 250)})
    cases: list[tuple[str, Any]] = [
        (ops.History.METHOD, page),
        (ops.History.METHOD, HistoryPage([message], True, {3: Annotation(body=b"\x02",
                                                                         edited_at=9)})),
        (ops.React.METHOD, {"👍": (2, True)}),
        (ops.React.METHOD, {}),
        (ops.Edit.METHOD, (12, 300)),
        (ops.Pin.METHOD, None),
        (ops.EditHistory.METHOD, [(3, "hi", 200), (12, "hi, edited", 300)]),
    ]
    for method, result in cases:
        to_wire, from_wire = ops.RESULTS[method]
        assert from_wire(over_the_wire(to_wire(result))) == result, method
    # A page from a peer that knows no annotations (two elements) reads as none.
    assert ops.history_from_wire([[ops.message_to_wire(message)], True]) == HistoryPage(
        [message], True)


def test_a_conversation_snapshot_carries_pins_and_unread_skips() -> None:
    conv = _conversation()  # member 2 has read up to 1, member 1 up to 3 (the head)
    conv.pins = [2, 3]
    conv.uncounted = UncountedSeqs([(2, 1)], complete=True, older=lambda seq: 0)
    assert conv.unread(2) == 1  # seqs 2 and 3 are after its read mark; 2 is uncounted
    back = ops.conversation_from_wire(over_the_wire(ops.conversation_to_wire(conv)))
    assert back.pins == [2, 3]
    assert (back.unread(1), back.unread(2)) == (0, 1)
    plain = ops.conversation_from_wire(over_the_wire(ops.conversation_to_wire(
        _conversation())))
    assert plain.pins == [] and plain.uncounted is None and plain.unread(2) == 2


def test_a_send_from_a_peer_without_attachments_is_taken() -> None:
    send = ops.Send(1, 2, 3, "c", "text/plain", "hi",
                    [{"media_id": 9, "kind": "image", "thumbnails": [96]}])
    assert ops.Send.from_wire(send.to_wire()) == send
    older = {key: value for key, value in send.to_wire().items() if key != "attachments"}
    assert ops.Send.from_wire(older).attachments == []
    with pytest.raises(ops.WireError):
        ops.Send.from_wire({**send.to_wire(), "attachments": [1, 2]})


def test_a_send_from_a_peer_without_replies_mentions_or_forwards_is_taken() -> None:
    rich = ops.Send(1, 2, 3, "c", "text/plain", "hi", [], 4, [5], 1)
    assert ops.Send.from_wire(over_the_wire(rich.to_wire())) == rich
    plain = ops.Send(1, 2, 3, "c", "text/plain", "hi")
    # Unused, they stay off the wire: an owner from before them takes a plain send.
    assert set(plain.to_wire()) == {"conversation_id", "sender_id", "sender_device",
                                    "client_msg_id", "content_type", "body", "attachments"}
    assert ops.Send.from_wire(plain.to_wire()) == plain
    for field, bad in (("reply_to", "4"), ("mentions", [True]), ("mentions", "5"),
                       ("forwarded", None)):
        with pytest.raises(ops.WireError):
            ops.Send.from_wire({**rich.to_wire(), field: bad})


def test_replies_mentions_and_forwards_of_messages_cross_the_wire() -> None:
    quote = {"sender_id": "1", "content_type": "text/plain", "text": "hi"}
    rich = Message(12, 7, 4, 2, 3, "c2", "text/plain", "re", 201, reply_to=3,
                   mentions=(1, 5), forwarded=2, quote=quote)
    expiring = Message(13, 7, 5, 2, 3, "c3", "text/plain", "x", 202, expires_at=900,
                       reply_to=4)
    for message in (rich, expiring):
        assert ops.message_from_wire(over_the_wire(ops.message_to_wire(message))) == message
    # A peer from before them reads the first eleven fields and the rest as unused.
    wire = over_the_wire(ops.message_to_wire(rich))
    assert len(wire) == 12
    older = Message(*wire[:9])
    assert (older.reply_to, older.mentions, older.quote) == (0, (), None)
    assert len(ops.message_to_wire(Message(11, 7, 3, 1, 2, "c1", "text/plain", "hi", 200))) == 9
