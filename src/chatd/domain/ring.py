"""The consistent-hash ring: which shard owns a conversation, which is a user's home.

Each shard gets `vnodes` points on a 64-bit circle (blake2b of "name#i"); a key belongs to
the first point clockwise from the key's own hash. Adding a shard moves only the keys that
land on its new points. Every shard builds the ring from the same config, and
`signature()` lets peers refuse each other when their rings differ.

Keys are ids (`shard_for`, `successors`: 8 bytes big-endian) or text (`shard_for_text`:
UTF-8). Where a key lands is part of the stored data's layout: changing the hash of
either moves every key, which is resharding.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Sequence

DEFAULT_VNODES = 128


def _point(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class HashRing:
    def __init__(self, shard_names: Sequence[str], vnodes: int = DEFAULT_VNODES) -> None:
        if not shard_names:
            raise ValueError("a ring needs at least one shard")
        if len(set(shard_names)) != len(shard_names):
            raise ValueError(f"shard names must be unique, got {list(shard_names)}")
        if vnodes < 1:
            raise ValueError("vnodes must be at least 1")
        self.shards: tuple[str, ...] = tuple(sorted(shard_names))
        self.vnodes = vnodes
        points = sorted(
            (_point(f"{name}#{i}".encode()), name) for name in self.shards for i in range(vnodes)
        )
        self._hashes = [h for h, _ in points]
        self._owners = [name for _, name in points]

    def shard_for(self, key: int) -> str:
        if len(self.shards) == 1:
            return self.shards[0]
        return self._owner_at(_point(key.to_bytes(8, "big")))

    def shard_for_text(self, text: str) -> str:
        """The shard a text key lands on: a handle's home shard, where its uniqueness is
        decided. The text is hashed as given, so pass the normalised handle
        (`rules.normalize_handle`): every spelling of one handle must land together."""
        if len(self.shards) == 1:
            return self.shards[0]
        return self._owner_at(_point(text.encode()))

    def chain(self, shard: str) -> tuple[str, ...]:
        """Every shard, starting at `shard` and going on in name order, round: the order
        in which the shards stand in for `shard`'s range (chatd/replication). Whole
        ranges move, not single keys, so that a failover is one decision per shard."""
        index = self.shards.index(shard)
        return self.shards[index:] + self.shards[:index]

    def successors(self, key: int, n: int) -> tuple[str, ...]:
        """The owner of `key`, then its replicas: the first `n` shards of its owner's
        chain (every shard, if there are fewer)."""
        if n < 1:
            raise ValueError(f"successors needs n >= 1, got {n}")
        return self.chain(self.shard_for(key))[:n]

    def _owner_at(self, point: int) -> str:
        index = bisect.bisect_right(self._hashes, point)
        return self._owners[index % len(self._owners)]

    def signature(self) -> str:
        """A short digest of the ring's membership and shape, compared at mesh handshake."""
        text = f"v1|{self.vnodes}|" + ",".join(self.shards)
        return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()
