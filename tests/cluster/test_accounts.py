"""Accounts from any shard: a handle is decided at its home, tokens work on every shard
and die everywhere at logout; presence and typing reach contacts connected elsewhere."""

from __future__ import annotations

import httpx
import trio

from chatd.client import ApiError, ChatClient, LiveConnection
from tests.cluster.harness import NAMES, RING, Cluster, handle_homed_at, next_of, nothing_more
from tests.helpers import PASSWORD


async def register(cluster: Cluster, shard: str, handle: str,
                   answers: dict[str, httpx.Response]) -> None:
    async with httpx.AsyncClient(base_url=cluster[shard].url, timeout=30) as http:
        answers[shard] = await http.post("/register", json={
            "handle": handle, "password": PASSWORD, "display_name": f"From {shard}"})


async def test_a_handle_raced_through_every_shard_is_registered_once(cluster: Cluster) -> None:
    """The same handle, spelled three ways, registered at once through a, b and c: its
    home serialises them, so exactly one 201 and two 409 handle_taken; afterwards every
    shard finds the winner, and logs in as the winner."""
    for home in NAMES:
        handle = handle_homed_at(home, prefix="race")
        spellings = {"a": handle, "b": handle.upper(), "c": handle.capitalize()}
        assert {RING.shard_for_text(spelling.lower()) for spelling in spellings.values()} == {
            home}
        answers: dict[str, httpx.Response] = {}

        async with trio.open_nursery() as nursery:
            for shard, spelling in spellings.items():
                nursery.start_soon(register, cluster, shard, spelling, answers)

        statuses = sorted(response.status_code for response in answers.values())
        assert statuses == [201, 409, 409], {s: r.text for s, r in answers.items()}
        [winner] = [shard for shard, response in answers.items()
                    if response.status_code == 201]
        for response in answers.values():
            if response.status_code == 409:
                assert response.json()["error"]["code"] == "handle_taken"
        user_id = answers[winner].json()["user_id"]
        for shard in NAMES:
            client = await cluster.client(shard)
            credentials = await client.login(handle, PASSWORD, f"via {shard}")
            assert credentials.user_id == user_id
            found = await client.find_user(handle.upper())
            assert (found["user_id"], found["display_name"]) == (user_id, f"From {winner}")


async def closed_code(live: LiveConnection) -> int | None:
    """Wait for the server to close the connection; its close code."""
    with trio.fail_after(10):
        while True:
            try:
                await live.next_event()
            except trio.EndOfChannel:
                return live.close_code


async def test_a_token_works_on_every_shard_and_logout_revokes_it_everywhere(
        cluster: Cluster) -> None:
    """Registered through a, homed on b, logged in through c: the token works on a, b
    and c. Logging out through c makes it 401 on every shard at once, and closes its
    WebSocket on a with 4001; the user's other device is untouched."""
    person = await cluster.person(home="b", via="a", login_via="c")
    phone = await cluster.login(person.handle, via="a", device="phone")
    assert person.token.startswith("chatd_001")  # minted by its home, number 1
    for shard in NAMES:
        me = await (await cluster.client(shard, person)).request("GET", "/me")
        assert (me["user_id"], me["handle"]) == (person.user_id, person.handle)

    async with (await cluster.client("a", person)).connect() as on_a, \
            (await cluster.client("c", phone)).connect() as phone_on_c:
        await on_a.ping()
        await phone_on_c.ping()
        await (await cluster.client("c", person)).logout()

        for shard in NAMES:
            with_token = ChatClient(cluster[shard].url, token=person.token)
            async with with_token:
                try:
                    await with_token.request("GET", "/me")
                except ApiError as exc:
                    assert (exc.status, exc.code) == (401, "invalid_token"), (shard, exc)
                else:
                    raise AssertionError(f"the revoked token still works on shard {shard}")
        assert await closed_code(on_a) == 4001
        assert on_a.close_reason is not None and "logged out" in on_a.close_reason
        # The other device is another token: still good everywhere, still connected.
        await phone_on_c.ping()
        for shard in NAMES:
            me = await (await cluster.client(shard, phone)).request("GET", "/me")
            assert me["user_id"] == person.user_id

    # A new connection with the revoked token, on a shard that is not its home.
    async with (await cluster.client("a", person)).connect() as again:
        assert await closed_code(again) == 4001


async def test_presence_and_typing_reach_contacts_connected_to_other_shards(
        cluster: Cluster) -> None:
    """Alice (home a) on her home shard, Bob (home c) on shard b: each learns the other
    is online, typing crosses both ways, and Bob sees Alice go offline."""
    alice, bob = await cluster.person(home="a"), await cluster.person(home="c")
    conversation = (await (await cluster.client("b", alice)).open_direct(bob.user_id))[
        "conversation_id"]
    # Contacts (docs/privacy.md): Bob accepts the request, through c.
    await (await cluster.client("c", bob)).accept_request(conversation)
    async with (await cluster.client("b", bob)).connect() as bob_live:
        # Answered once Bob's session is set up, including asking who of his contacts
        # is online (nobody yet): from now on he hears of Alice only as she moves.
        await bob_live.ping()
        async with (await cluster.client("a", alice)).connect() as alice_live:
            # Alice's session is told Bob is online (his home, c, knows he is on b).
            seen = await next_of(alice_live, "presence")
            assert (seen["user_id"], seen["online"]) == (bob.user_id, True)
            # Bob is told Alice came online (through his home c, forwarded to b).
            seen = await next_of(bob_live, "presence")
            assert (seen["user_id"], seen["online"]) == (alice.user_id, True)

            await alice_live.typing(conversation)
            typing = await next_of(bob_live, "typing")
            assert (typing["conversation_id"], typing["user_id"]) == (conversation,
                                                                      alice.user_id)
            await bob_live.typing(conversation)
            typing = await next_of(alice_live, "typing")
            assert (typing["conversation_id"], typing["user_id"]) == (conversation,
                                                                      bob.user_id)
        seen = await next_of(bob_live, "presence")
        assert (seen["user_id"], seen["online"]) == (alice.user_id, False)
        assert isinstance(seen["last_seen"], int)


async def test_presence_is_the_users_not_a_shards(cluster: Cluster) -> None:
    """Alice with sockets on two shards comes online once and goes offline once: closing
    the one on a while she is still on b tells Bob nothing."""
    alice, bob = await cluster.person(home="a"), await cluster.person(home="c")
    conversation = (await (await cluster.client("c", alice)).open_direct(bob.user_id))[
        "conversation_id"]
    await (await cluster.client("c", bob)).accept_request(conversation)  # contacts
    async with (await cluster.client("c", bob)).connect() as bob_live:
        await bob_live.ping()
        async with (await cluster.client("b", alice)).connect() as on_b:
            await on_b.ping()
            seen = await next_of(bob_live, "presence")
            assert (seen["user_id"], seen["online"]) == (alice.user_id, True)
            async with (await cluster.client("a", alice)).connect() as on_a:
                await on_a.ping()
            # Her socket on a closed; she is still on b.
            await nothing_more(bob_live, "presence", wait=1.0)
        seen = await next_of(bob_live, "presence")
        assert (seen["user_id"], seen["online"]) == (alice.user_id, False)
