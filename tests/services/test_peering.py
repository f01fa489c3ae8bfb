"""What a peer sends is checked before anything runs: a body that does not fit its
method is refused (400), an unknown method is 404, a bad post is dropped and logged, and
none of it changes state. (Real services over a real store; the mesh is tested in
tests/transport and tests/cluster.)"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from chatd.errors import BadRequest, NotFound
from chatd.services.peering import PeerHandler
from tests.services.conftest import Shard


def handler(shard: Shard) -> PeerHandler:
    services = shard.services
    return PeerHandler(coordinator=services.coordinator, owner_api=services.owner_api,
                       home_api=services.home_api, delivery=services.delivery)


@pytest.mark.parametrize("method, body", [
    ("owner.send", {"conversation_id": 1}),
    ("owner.send", ["not", "a", "map"]),
    ("owner.view", {"conversation_id": "1", "user_id": 2}),
    ("owner.conversations_of", {"conversation_id": 0, "user_id": 1, "device_id": 2,
                                "after": 0, "cursors": {1: 2}}),
    ("home.user", {"user_id": "1"}),
    ("home.users_exist", {"user_ids": [1, True]}),
    ("home.login", None),
])
async def test_a_body_that_does_not_fit_its_method_is_refused(
        shard: Shard, method: str, body: Any) -> None:
    before = shard.services.committer.statistics()
    with pytest.raises(BadRequest):
        handler(shard).handle_request("b", method, body)
    assert shard.services.committer.statistics() == before


async def test_an_unknown_method_is_404(shard: Shard) -> None:
    with pytest.raises(NotFound):
        handler(shard).handle_request("b", "owner.drop_table", {})


async def test_a_bad_post_is_dropped_and_logged(shard: Shard,
                                                caplog: pytest.LogCaptureFixture) -> None:
    alice = await shard.user()
    peer = handler(shard)
    with caplog.at_level(logging.WARNING):
        peer.handle_post("b", "deliver", {"kind": "message", "data": [1], "users": "x"})
        peer.handle_post("b", "directory.attach", {"users": [alice.user_id, "2"]})
        peer.handle_post("b", "home.cursor_hints", {"hints": "nope"})
        peer.handle_post("b", "no.such.post", {})
    assert "malformed deliver" in caplog.text
    assert "unknown method 'no.such.post'" in caplog.text
    # Nothing was attached or recorded.
    assert not shard.services.delivery.is_online_here_or_known(alice.user_id)
    assert shard.services.messaging.cursors_of(alice.device_id) == {}
