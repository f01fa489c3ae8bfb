from __future__ import annotations

import pytest

from chatd.domain.ids import (
    CHATD_EPOCH_MS,
    MAX_ID,
    SnowflakeGenerator,
    direct_conversation_id,
    parse_id,
    snowflake_time_ms,
)
from chatd.errors import BadRequest


class FakeClock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def test_ids_increase_and_carry_time_and_shard() -> None:
    clock = FakeClock(CHATD_EPOCH_MS + 5_000)
    generator = SnowflakeGenerator(7, clock)
    ids = [generator.next_id() for _ in range(10_000)]  # more than 4096 in one ms
    assert ids == sorted(set(ids))
    assert all(0 < i <= MAX_ID for i in ids)
    assert snowflake_time_ms(ids[0]) == CHATD_EPOCH_MS + 5_000
    assert (ids[0] >> 12) & 0x3FF == 7


def test_a_clock_stepping_back_does_not_repeat_ids() -> None:
    clock = FakeClock(CHATD_EPOCH_MS + 10_000)
    generator = SnowflakeGenerator(0, clock)
    first = generator.next_id()
    clock.now -= 5_000
    assert generator.next_id() > first


def test_shards_never_collide() -> None:
    clock = FakeClock(CHATD_EPOCH_MS + 1)
    a, b = SnowflakeGenerator(1, clock), SnowflakeGenerator(2, clock)
    assert {a.next_id() for _ in range(100)}.isdisjoint({b.next_id() for _ in range(100)})


def test_direct_ids_are_symmetric_and_distinct() -> None:
    assert direct_conversation_id(1, 2) == direct_conversation_id(2, 1)
    assert direct_conversation_id(1, 2) != direct_conversation_id(1, 3)
    assert 0 < direct_conversation_id(5, 5) <= MAX_ID


@pytest.mark.parametrize("value", ["", "-1", "0", "1.5", "abc", "12345678901234567890", True,
                                   None, 2**63, [1], "١٢٣"])
def test_parse_id_rejects(value: object) -> None:
    with pytest.raises(BadRequest):
        parse_id(value, "x")


def test_parse_id_accepts_strings_and_ints() -> None:
    assert parse_id("42", "x") == 42 == parse_id(42, "x")
    assert parse_id(str(MAX_ID), "x") == MAX_ID
