"""`chatd.client`'s media calls against a real server: upload from a path (streamed),
download with resume, a corrupt partial file caught by the sha256."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatd.client import ApiError, ChatClient
from chatd.server import RunningServer
from tests.helpers import PASSWORD, fresh_handle
from tests.media_files import random_bytes


async def test_upload_a_path_and_resume_a_download(server: RunningServer,
                                                   tmp_path: Path) -> None:
    data = random_bytes(3_000_000)
    source = tmp_path / "video.bin"
    source.write_bytes(data)
    async with ChatClient(server.url) as client:
        handle = fresh_handle()
        await client.register(handle, PASSWORD, handle)
        await client.login(handle, PASSWORD)
        media = await client.upload(source, "application/octet-stream")
        assert media["filename"] == "video.bin" and media["size"] == len(data)
        target = tmp_path / "copy.bin"
        partial = tmp_path / "copy.bin.part"
        # An interrupted download: the first megabyte is there; only the rest is asked.
        partial.write_bytes(data[:1_000_000])
        assert (await client.download(media["media_id"], target)).read_bytes() == data
        assert not partial.exists()
        # A partial file that is not a prefix of the media is caught by the hash.
        (tmp_path / "bad.bin.part").write_bytes(b"x" * 10)
        with pytest.raises(ApiError) as caught:
            await client.download(media["media_id"], tmp_path / "bad.bin")
        assert caught.value.code == "corrupt_download"
        assert not (tmp_path / "bad.bin.part").exists()  # the next try starts clean
        # A partial file longer than the media: started again from scratch.
        (tmp_path / "again.bin.part").write_bytes(data + b"more")
        again = await client.download(media["media_id"], tmp_path / "again.bin")
        assert again.read_bytes() == data


async def test_replies_mentions_and_forwards_through_the_client(server: RunningServer,
                                                               ) -> None:
    async with ChatClient(server.url) as alice, ChatClient(server.url) as bob:
        for client in (alice, bob):
            handle = fresh_handle()
            await client.register(handle, PASSWORD, handle)
            await client.login(handle, PASSWORD)
        assert alice.credentials is not None and bob.credentials is not None
        bob_id = bob.credentials.user_id
        bob_handle = (await alice.user(bob_id))["handle"]
        group = (await alice.create_group("g", [bob_id]))["conversation_id"]
        first = await alice.send(group, "first")
        reply = await bob.send(group, "second", reply_to=first["seq"])
        mentioning = await alice.send(group, f"@{bob_handle} look", mentions=[bob_id])
        async with alice.connect("msgpack") as live:
            over_ws = await live.send(group, b"opaque", content_type="application/x-olm",
                                      reply_to=reply["seq"], mentions=[bob_id])
        entries = {m["seq"]: m for m in (await alice.history(group, after=0))["messages"]}
        assert entries[reply["seq"]]["quote"]["text"] == "first"
        assert entries[mentioning["seq"]]["mentions"] == [bob_id]
        assert entries[over_ws["seq"]]["reply_to"] == reply["seq"]
        assert entries[over_ws["seq"]]["mentions"] == [bob_id]
        assert entries[over_ws["seq"]]["quote"] == {
            "sender_id": bob_id, "content_type": "text/plain", "text": "second"}
        assert [member["user_id"] for member in await alice.members(group)][1] == bob_id

        other = (await bob.create_group("other", []))["conversation_id"]
        [copy, refused] = await bob.forward(group, reply["seq"], [other, "1234"],
                                            client_msg_id="fwd-1")
        assert copy["conversation_id"] == other and copy["seq"] == 2
        assert refused["error"]["code"] == "unknown_conversation"
        assert await bob.forward(group, reply["seq"], [other], client_msg_id="fwd-1") == [copy]
        with pytest.raises(ApiError) as caught:
            await alice.forward(other, 2, [group])
        assert caught.value.status == 404
        with pytest.raises(ApiError) as caught:
            await alice.send(group, "re", reply_to=99)
        assert (caught.value.status, caught.value.code) == (404, "unknown_message")


async def test_reactions_edits_and_pins_through_the_client(server: RunningServer) -> None:
    async with ChatClient(server.url) as alice, ChatClient(server.url) as bob:
        for client in (alice, bob):
            handle = fresh_handle()
            await client.register(handle, PASSWORD, handle)
            await client.login(handle, PASSWORD)
        assert bob.credentials is not None
        group = (await alice.create_group("g", [bob.credentials.user_id]))["conversation_id"]
        sent = await alice.send(group, "frist")
        seq = sent["seq"]
        summary = await bob.react(group, seq, "👍")
        assert summary["reactions"] == {"👍": {"count": 1, "me": True}}
        edited = await alice.edit(group, seq, "first")
        assert edited["seq"] > seq and edited["edited_at"] > 0
        assert [entry["body"] for entry in await alice.edits(group, seq)] == ["frist", "first"]
        await alice.pin(group, seq)
        assert (await alice.request("GET", f"/conversations/{group}"))["pins"] == [seq]
        entries = {m["seq"]: m for m in (await bob.history(group, after=0))["messages"]}
        assert entries[seq]["body"] == "first" and entries[seq]["edited_at"]
        assert entries[seq]["reactions"] == {"👍": {"count": 1, "me": True}}
        await bob.unreact(group, seq, "👍")
        await alice.unpin(group, seq)
        assert (await alice.request("GET", f"/conversations/{group}"))["pins"] == []
        async with alice.connect() as live:
            await live.react(group, seq, "🎉")
        entries = {m["seq"]: m for m in (await bob.history(group, after=0))["messages"]}
        assert entries[seq]["reactions"] == {"🎉": {"count": 1, "me": False}}
        with pytest.raises(ApiError) as caught:
            await bob.edit(group, seq, "not yours")
        assert caught.value.status == 403
