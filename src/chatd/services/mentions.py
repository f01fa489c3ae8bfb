"""Mentions, the sender's shard's side: `@handle`s in a text resolved to user ids.

The owner knows its members' ids, not their handles; handles live at their homes. So the
shard a client sends through looks each mentioned handle up at its home (`Users`), once
per distinct handle and concurrently, and hands the ids to the owner with the send; the
owner keeps those who are members (domain/replies.py `kept_mentions`). A handle nobody
has, or whose home cannot be asked now, mentions nobody: a mention is a courtesy, never a
reason to refuse a message. Explicit ids a client sends (the only way for an encrypted
body) are merged in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

import trio

from chatd.domain import replies, rules
from chatd.domain.models import User
from chatd.errors import ChatdError


class MentionResolver:
    def __init__(self, *, find_by_handle: Callable[[str], Awaitable[User]]) -> None:
        self._find_by_handle = find_by_handle

    async def resolve(self, content_type: str, body: str | bytes,
                      explicit: list[int]) -> list[int]:
        """The ids a send mentions: `explicit` (at most `MAX_MENTIONS`, else 400) and
        those of the @handles of a text body, in that order, distinct."""
        mentioned = replies.check_mention_ids(explicit)
        if not isinstance(body, str) or not rules.is_text_content(content_type):
            return mentioned
        handles = mentioned_handles_left(body, len(mentioned))
        if not handles:
            return mentioned
        found: dict[int, int] = {}

        async def look_up(index: int, handle: str) -> None:
            with contextlib.suppress(ChatdError):  # unknown, or its home is down
                found[index] = (await self._find_by_handle(handle)).user_id

        async with trio.open_nursery() as nursery:
            for index, handle in enumerate(handles):
                nursery.start_soon(look_up, index, handle)
        resolved = [found[index] for index in sorted(found)]
        return list(dict.fromkeys([*mentioned, *resolved]))[:replies.MAX_MENTIONS]


def mentioned_handles_left(body: str, taken: int) -> list[str]:
    """The text's handles, no more than the room `taken` explicit ids leave."""
    return replies.mentioned_handles(body)[:max(0, replies.MAX_MENTIONS - taken)]
