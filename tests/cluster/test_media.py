"""Media across shards: the media's shard, the conversation's owner, the sender's and the
reader's shard all different. Access is asked of the owner, bytes come over the mesh."""

from __future__ import annotations

import hashlib
import os

import httpx

from chatd.client import ApiError
from tests.cluster.harness import Cluster, owner_of
from tests.media_files import png


async def test_media_work_across_shards(cluster: Cluster) -> None:
    alice = await cluster.person(home="a")
    bob = await cluster.person(home="b")
    stranger = await cluster.person(home="c")
    on = {(who.handle, shard): await cluster.client(shard, who)
          for who in (alice, bob, stranger) for shard in ("a", "b", "c")}
    # A group owned by b: the media will live on a, be sent through c, read through c.
    while True:
        group = (await on[alice.handle, "a"].create_group("g", [bob.user_id]))[
            "conversation_id"]
        if owner_of(group) == "b":
            break
    data = os.urandom(600_000)  # three mesh reads of 256 KiB
    uploaded = await on[alice.handle, "a"].upload(data, "application/octet-stream",
                                                 filename="notes.bin")
    media_id = uploaded["media_id"]
    photo = await on[alice.handle, "a"].upload(png(), "image/png")

    # Not sendable by others, not visible before a message carries it.
    for shard in ("a", "c"):
        try:
            await on[bob.handle, shard].media_bytes(media_id)
            raise AssertionError("bob saw the media before it was sent to him")
        except ApiError as exc:
            assert exc.status == 404 and exc.code == "unknown_media"
    try:
        await on[stranger.handle, "c"].send(group, "x", attachments=[media_id])
        raise AssertionError("a stranger sent someone else's media")
    except ApiError as exc:
        assert exc.status in (403, 404)

    sent = await on[alice.handle, "c"].send(group, "files", attachments=[media_id, photo[
        "media_id"]])
    assert sent["seq"] >= 2
    page = await on[bob.handle, "c"].history(group)
    [message] = [m for m in page["messages"] if m.get("attachments")]
    assert [a["media_id"] for a in message["attachments"]] == [media_id, photo["media_id"]]

    # Bob reads it through every shard; the stranger through none.
    for shard in ("a", "b", "c"):
        assert await on[bob.handle, shard].media_bytes(media_id) == data
        try:
            await on[stranger.handle, shard].media_bytes(media_id)
            raise AssertionError("a stranger read the media")
        except ApiError as exc:
            assert exc.status == 404
    headers = {"Authorization": f"Bearer {bob.token}"}
    async with httpx.AsyncClient(base_url=cluster["c"].url, timeout=30) as http:
        ranged = await http.get(f"/media/{media_id}", headers={
            **headers, "Range": "bytes=262100-262200"})
        assert ranged.status_code == 206 and ranged.content == data[262100:262201]
        thumb = await http.get(f"/media/{photo['media_id']}/thumbnail?size=96",
                               headers=headers)
        assert thumb.status_code == 200 and thumb.content[:4] == b"RIFF"
        # A link made on b works on c, without a token.
        link = (await on[bob.handle, "b"].request(
            "POST", f"/media/{media_id}/link", {"ttl_s": 60}))["url"]
        assert hashlib.sha256((await http.get(link)).content).hexdigest() == \
            uploaded["sha256"]

    # Alice deletes her upload through c: the message still carries it for Bob.
    await on[alice.handle, "c"].delete_media(media_id)
    assert await on[bob.handle, "b"].media_bytes(media_id) == data

    # A profile photo uploaded on a, set by a user homed on c through b.
    mine = await on[stranger.handle, "a"].upload(png(), "image/png")
    profile = await on[stranger.handle, "b"].request(
        "PATCH", "/me", {"photo_media_id": mine["media_id"]})
    assert profile["photo_media_id"] == mine["media_id"]
    seen = await on[bob.handle, "c"].request("GET", f"/users/{stranger.user_id}")
    assert seen["photo_media_id"] == mine["media_id"]
    async with httpx.AsyncClient(base_url=cluster["b"].url, timeout=30) as http:
        shown = await http.get(f"/media/{mine['media_id']}/thumbnail?size=96",
                               headers=headers)
        assert shown.status_code == 200
