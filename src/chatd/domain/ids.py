"""Snowflake-style 64-bit ids and the derived ids of direct conversations.

Layout of a Snowflake id (fits a signed int64, so it is always positive):

    | 41 bits: ms since CHATD_EPOCH | 10 bits: shard number | 12 bits: counter |

Ids from one generator are strictly increasing; ids from different shards never collide
because the shard number is part of the id. Ids travel as decimal strings in JSON because
JavaScript numbers lose precision above 2**53.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from chatd.errors import BadRequest

#: 2025-01-01T00:00:00Z in ms since the Unix epoch.
CHATD_EPOCH_MS = 1_735_689_600_000
SHARD_BITS = 10
COUNTER_BITS = 12
MAX_SHARD = (1 << SHARD_BITS) - 1
_COUNTER_MASK = (1 << COUNTER_BITS) - 1
MAX_ID = (1 << 63) - 1


class SnowflakeGenerator:
    """Hands out unique, increasing ids for one shard.

    `clock_ms` is injected so that tests can drive time. If the clock steps backwards the
    generator keeps counting from the last time it used instead of reusing ids.
    """

    def __init__(self, shard_number: int, clock_ms: Callable[[], int]) -> None:
        if not 0 <= shard_number <= MAX_SHARD:
            raise ValueError(f"shard number {shard_number} is outside 0..{MAX_SHARD}")
        self._shard = shard_number
        self._clock_ms = clock_ms
        self._last_ms = 0
        self._counter = 0

    def next_id(self) -> int:
        now = max(self._clock_ms() - CHATD_EPOCH_MS, self._last_ms)
        if now == self._last_ms:
            self._counter = (self._counter + 1) & _COUNTER_MASK
            if self._counter == 0:
                # 4096 ids in one millisecond: borrow the next millisecond rather than
                # block the event loop; the clock catches up within a few ms.
                now += 1
        else:
            self._counter = 0
        self._last_ms = now
        return (now << (SHARD_BITS + COUNTER_BITS)) | (self._shard << COUNTER_BITS) | self._counter


def snowflake_time_ms(snowflake: int) -> int:
    return (snowflake >> (SHARD_BITS + COUNTER_BITS)) + CHATD_EPOCH_MS


def first_id_at(ms: int) -> int:
    """The lowest id any shard can make at or after Unix time `ms`."""
    return max(0, ms - CHATD_EPOCH_MS) << (SHARD_BITS + COUNTER_BITS)


def direct_conversation_id(user_a: int, user_b: int) -> int:
    """The one conversation id for a pair of users, whoever asks first.

    Deriving the id (instead of allocating one and indexing the pair) means every shard
    computes the same id, and so the same owner shard, which then serialises the creation.
    """
    low, high = sorted((user_a, user_b))
    digest = hashlib.blake2b(
        low.to_bytes(8, "big") + high.to_bytes(8, "big"), digest_size=8, person=b"chatd-direct"
    ).digest()
    return (int.from_bytes(digest, "big") & MAX_ID) or 1


def parse_id(value: object, field: str) -> int:
    """Parse an id as it arrives from a client: a decimal string (or an int from msgpack)."""
    if isinstance(value, bool):
        raise BadRequest(f"{field} must be an id (a decimal string), got a boolean")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        number = int(value)
    else:
        raise BadRequest(f"{field} must be an id (a decimal string of up to 19 digits)")
    if not 0 < number <= MAX_ID:
        raise BadRequest(f"{field} is out of range for an id")
    return number
