"""The content filter on a real shard: a text body naming a blocked domain is refused over
REST (403 content_blocked) and over the WebSocket (an error frame), and nothing is
written; other bodies, and a shard with no blocklist, are untouched."""

from __future__ import annotations

import base64

import httpx
import pytest

from chatd.client import ApiError, ChatClient
from tests.conftest import ServerFactory
from tests.helpers import PASSWORD, assert_error, new_account


async def test_blocked_links_are_refused_over_rest_and_ws(start_server: ServerFactory) -> None:
    running = await start_server(abuse={"blocked_domains": ("evil.example",)})
    async with httpx.AsyncClient(base_url=running.url, timeout=30) as http:
        alice, bob = await new_account(http), await new_account(http)
        chat = await alice.direct_with(bob)
        refused = await alice.send(chat, "free money at https://www.EVIL.example/win")
        assert_error(refused, 403, "content_blocked")
        assert "evil.example" in refused.json()["error"]["message"]
        assert (await alice.send(chat, "see https://good.example/")).status_code == 201
        # Not text: the server cannot read it, so the filter never sees it.
        opaque = await alice.post("/messages/send", {
            "conversation_id": chat, "client_msg_id": "bin-1",
            "content_type": "application/octet-stream",
            "body": base64.b64encode(b"evil.example").decode()})
        assert opaque.status_code == 201, opaque.text

        async with ChatClient(running.url) as client:
            await client.login(alice.handle, PASSWORD, "ws")
            async with client.connect() as live:
                with pytest.raises(ApiError) as caught:
                    await live.send(chat, "evil.example/again")
                assert caught.value.code == "content_blocked"
                sent = await live.send(chat, "fine")  # the socket carries on
                assert sent["seq"] == 3

        page = (await bob.get(f"/messages/{chat}", params={"after": 0})).json()
        assert [m["seq"] for m in page["messages"]] == [1, 2, 3]
        assert not any("evil" in str(m["body"]) for m in page["messages"]
                       if m["content_type"] == "text/plain")


async def test_no_blocklist_means_no_filter(start_server: ServerFactory) -> None:
    running = await start_server()
    assert running.services.messaging.content_filter is None
    async with httpx.AsyncClient(base_url=running.url, timeout=30) as http:
        alice = await new_account(http)
        note = await alice.direct_with(alice)
        assert (await alice.send(note, "https://evil.example/")).status_code == 201
