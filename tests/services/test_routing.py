"""Where things live: owners by the ring, homes by the shard number in an id or a token."""

from __future__ import annotations

from chatd.domain.ids import SnowflakeGenerator
from chatd.domain.ring import HashRing
from chatd.services.routing import Router
from chatd.services.users import token_home_number, token_prefix_for

NUMBERS = {"a": 0, "b": 1, "c": 1023}


def router(shard: str = "a") -> Router:
    return Router(HashRing(list(NUMBERS)), shard, NUMBERS)


def test_a_users_home_is_the_shard_that_minted_its_id() -> None:
    for name, number in NUMBERS.items():
        ids = SnowflakeGenerator(number, lambda: 1_800_000_000_000)
        assert {router().home_of_user(ids.next_id()) for _ in range(100)} == {name}


def test_every_shard_agrees_on_owners_and_handle_homes() -> None:
    routers = [router(name) for name in NUMBERS]
    for key in range(1, 2_000, 7):
        assert len({r.owner_of_conversation(key) for r in routers}) == 1
        assert len({r.home_of_handle(f"user{key}") for r in routers}) == 1
    owners = {routers[0].owner_of_conversation(key) for key in range(1, 2_000)}
    assert owners == set(NUMBERS)  # every shard owns a share


def test_a_token_names_its_home() -> None:
    for number in (0, 1, 1023):
        assert token_home_number(token_prefix_for(number) + "randompart") == number
    assert token_home_number("chatd_zzzrandom") is None
    assert token_home_number("nope") is None
    assert token_home_number("chatd_") is None
