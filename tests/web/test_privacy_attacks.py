"""A hostile stranger, or a blocked user, against the privacy rules (docs/privacy.md):
each test is a way around them that was found open, and stays closed."""

from __future__ import annotations

import httpx

from chatd.server import RunningServer
from tests.helpers import assert_error, new_account
from tests.web.test_privacy import events_of, live, open_request


async def test_a_blocked_user_cannot_write_into_the_chat_through_its_timer(
        server: RunningServer, http: httpx.AsyncClient) -> None:
    """A disappearing-timer change is a system entry delivered live into the other's
    chat: a blocked user (or a declined requester) could post into it at will, with no
    rate limit, and change the blocker's timer."""
    alice, bob = await new_account(http), await new_account(http)
    conversation_id = await alice.direct_with(bob)
    assert (await alice.post(f"/blocks/{bob.user_id}")).status_code == 204
    async with live(server, alice) as a:
        assert_error(await bob.patch(f"/conversations/{conversation_id}",
                                     {"disappearing_s": 86400}), 403, "cannot_message")
        assert await events_of(a, "message") == []
    view = (await alice.get(f"/conversations/{conversation_id}")).json()
    assert view["disappearing_s"] == 0 and view["last_seq"] == 0
    # The blocker is refused too (as for a message), until they unblock.
    assert_error(await alice.patch(f"/conversations/{conversation_id}",
                                   {"disappearing_s": 86400}), 403, "you_blocked")

    # A declined request's sender likewise.
    carol = await new_account(http)
    request = await open_request(carol, alice)
    assert (await alice.post(f"/conversations/{request}/decline")).status_code == 200
    head = (await alice.get(f"/conversations/{request}")).json()["last_seq"]
    assert_error(await carol.patch(f"/conversations/{request}", {"disappearing_s": 86400}),
                 403, "cannot_message")
    assert (await alice.get(f"/conversations/{request}")).json()["last_seq"] == head
