"""The rules of replies, mentions and forwards (domain/replies.py), without a server."""

from __future__ import annotations

import pytest

from chatd.domain import replies
from chatd.domain.deletion import tombstone_of
from chatd.domain.models import Conversation, Member, Message
from chatd.domain.rules import SYSTEM_CONTENT_TYPE
from chatd.errors import BadRequest, Conflict, NotFound


def message(body: str | bytes = "hello", content_type: str = "text/plain", **extra: object,
            ) -> Message:
    return Message(1, 7, 3, 42, 1, "c", content_type, body, 10, **extra)  # type: ignore[arg-type]


def test_handles_are_found_in_a_text() -> None:
    text = ("hey @Alice, @bob. and @carol.d and @+14155550123! not mail@dave.com, "
            "not @@eve, not @ab (too short), @alice again")
    assert replies.mentioned_handles(text) == [
        "alice", "bob", "bob.", "carol.d", "+14155550123"]
    assert replies.mentioned_handles("no at sign") == []
    assert replies.mentioned_handles("@" + "x" * 33) == []  # too long to be a handle
    many = " ".join(f"@user_{n}" for n in range(80))
    assert len(replies.mentioned_handles(many)) == replies.MAX_MENTIONS


def test_explicit_mentions_are_bounded_and_kept_for_members_only() -> None:
    assert replies.check_mention_ids([3, 3, 2]) == [3, 2]
    with pytest.raises(BadRequest):
        replies.check_mention_ids(list(range(replies.MAX_MENTIONS + 1)))
    conv = Conversation(7, "group", "g", 1, 0)
    conv.members = {1: Member("admin", 1), 2: Member("member", 1), 3: Member("member", 1)}
    assert replies.kept_mentions(conv, 1, [9, 3, 1, 2, 3]) == (3, 2)


def test_a_quote_shows_the_start_of_a_text_and_nothing_of_an_opaque_body() -> None:
    text = "ü" * 150
    assert replies.quote_of(message(text)) == {
        "sender_id": "42", "content_type": "text/plain", "text": "ü" * 100}
    assert replies.quote_of(message(b"\x00secret", "application/x-olm")) == {
        "sender_id": "42", "content_type": "application/x-olm"}
    assert replies.quote_of(tombstone_of(message("gone"))) == {
        "sender_id": "42", "content_type": "chatd/deleted", "deleted": True}


def test_a_tombstone_keeps_nothing_of_a_reply_mention_or_forward() -> None:
    rich = message("re", reply_to=2, mentions=(5,), forwarded=3, quote={"text": "x"})
    gone = tombstone_of(rich)
    assert (gone.reply_to, gone.mentions, gone.forwarded, gone.quote) == (0, (), 0, None)


def test_what_may_be_forwarded_and_where() -> None:
    assert replies.forwardable(message(), 3).body == "hello"
    with pytest.raises(NotFound):
        replies.forwardable(None, 3)
    with pytest.raises(NotFound):
        replies.forwardable(message(), 4)  # the page began after the seq asked for
    with pytest.raises(NotFound):
        replies.forwardable(tombstone_of(message()), 3)
    with pytest.raises(Conflict):
        replies.forwardable(message({"event": "renamed"}, SYSTEM_CONTENT_TYPE), 3)  # type: ignore[arg-type]
    assert replies.check_forward_targets(message(), [1, 2, 2, 3]) == [1, 2, 3]
    with pytest.raises(BadRequest):
        replies.check_forward_targets(message(), list(range(6)))
    with pytest.raises(BadRequest):
        replies.check_forward_targets(message(), [])
    viral = message(forwarded=replies.FORWARDED_MANY_HOPS)
    assert replies.check_forward_targets(viral, [4]) == [4]
    with pytest.raises(BadRequest, match="one conversation at a time"):
        replies.check_forward_targets(viral, [4, 5])
    assert not replies.is_forwarded_many(replies.FORWARDED_MANY_HOPS - 1)
