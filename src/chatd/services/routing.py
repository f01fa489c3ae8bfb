"""Where work happens: the owner shard of a conversation, the home shard of a user.

This is the seam the shard mesh plugs into. Today a deployment has one shard, so every
key is local; `require_local_*` makes the remote case an explicit, clear 503 instead of
a silent wrong answer if a ring ever names another shard.
"""

from __future__ import annotations

from chatd.domain.ring import HashRing
from chatd.errors import Unavailable


class Router:
    def __init__(self, ring: HashRing, shard: str) -> None:
        if shard not in ring.shards:
            raise ValueError(f"shard {shard!r} is not on the ring {ring.shards}")
        self.ring = ring
        self.shard = shard

    def owner_of_conversation(self, conversation_id: int) -> str:
        return self.ring.shard_for(conversation_id)

    def home_of_user(self, user_id: int) -> str:
        return self.ring.shard_for(user_id)

    def require_local_conversation(self, conversation_id: int) -> None:
        owner = self.owner_of_conversation(conversation_id)
        if owner != self.shard:
            raise Unavailable(f"conversation {conversation_id} is owned by shard {owner!r}, "
                              "which this shard cannot reach", code="owner_unreachable")

    def require_local_user(self, user_id: int) -> None:
        home = self.home_of_user(user_id)
        if home != self.shard:
            raise Unavailable(f"user {user_id} lives on shard {home!r}, "
                              "which this shard cannot reach", code="home_unreachable")
