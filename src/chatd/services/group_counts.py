"""How many groups each user is in, among the conversations this owner shard serves:
the `limits.max_groups_per_user` cap.

Membership lives with each conversation's owner, indexed by user in
`records.USER_CONVERSATIONS`, so the cap is checked where it can be exactly and cheaply:
per owner shard, against the groups that shard owns (a user may so be in up to the cap
times the number of shards, cluster-wide). A user's count is read from the index once,
then kept in step by the commands that add and remove members.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from chatd.storage import Store, records


class GroupCounts:
    def __init__(self, store: Store, *, max_users: int = 100_000) -> None:
        self._store = store
        self._max_users = max_users
        self._counts: OrderedDict[int, int] = OrderedDict()
        #: Whether this shard owns a conversation now: a replica's records of another
        #: shard's range are in the same index, and must not count here.
        self.serves: Callable[[int], bool] = lambda _conversation_id: True

    def of(self, user_id: int) -> int:
        count = self._counts.get(user_id)
        if count is None:
            count = self._read(user_id)
        self._set(user_id, count)
        return count

    def changed(self, user_id: int, delta: int) -> None:
        """A command added the user to a group (+1) or took them out of one (-1)."""
        if user_id in self._counts:
            self._set(user_id, max(0, self._counts[user_id] + delta))
        # Not held: read from the index when next needed. Commands run one at a time and
        # a count is read inside one before it changes anything, so only a count evicted
        # while its user's batch is in flight can come back a few groups short.

    def clear(self) -> None:
        """Memory may be ahead of the disk, or ranges moved: read counts afresh."""
        self._counts.clear()

    def _read(self, user_id: int) -> int:
        count = 0
        for (_, conversation_id), _ in self._store.scan(records.USER_CONVERSATIONS,
                                                        records.u64(user_id)):
            if not self.serves(conversation_id):
                continue
            conv = self._store.get(records.CONVERSATIONS, conversation_id)
            if conv is not None and conv.kind == "group":
                count += 1
        return count

    def _set(self, user_id: int, count: int) -> None:
        self._counts[user_id] = count
        self._counts.move_to_end(user_id)
        if len(self._counts) > self._max_users:
            self._counts.popitem(last=False)
