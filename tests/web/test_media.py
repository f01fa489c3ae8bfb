"""/media over a real server: uploads and downloads of real files, ranges, ETags, signed
links, thumbnails, access rules, limits, quarantine."""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path
from typing import Any

import httpx
import trio
from PIL import Image

from chatd.server import RunningServer
from chatd.storage import records
from tests.conftest import ServerFactory
from tests.helpers import Account, ManualClock, assert_error, new_account
from tests.media_files import (
    GPS_IFD,
    bomb,
    file_chunks,
    jpeg_with_exif,
    pdf,
    png,
    random_bytes,
    sha256_of_file,
    sparse_file,
)


async def upload(account: Account, data: bytes, content_type: str,
                 filename: str | bytes | None = None) -> httpx.Response:
    headers: dict[str, Any] = {**account.headers, "Content-Type": content_type}
    if filename is not None:
        headers["X-Filename"] = filename
    return await account.http.post("/media/upload", content=data, headers=headers)


async def uploaded(account: Account, data: bytes, content_type: str,
                   filename: str | None = None) -> dict[str, Any]:
    response = await upload(account, data, content_type, filename)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def fetch(account: Account, path: str, **headers: str) -> httpx.Response:
    return await account.http.get(path, headers={**account.headers, **headers})


async def send_with(account: Account, conversation_id: str, *media_ids: str,
                    ) -> httpx.Response:
    return await account.post("/messages/send", {
        "conversation_id": conversation_id, "client_msg_id": f"m{time.monotonic_ns()}",
        "content_type": "text/plain", "body": "look",
        "attachments": [{"media_id": media_id} for media_id in media_ids]})


async def test_round_trips_of_real_files(http: httpx.AsyncClient) -> None:
    alice = await new_account(http)
    files = [
        (jpeg_with_exif(), "image/jpeg", "photo.jpg", "inline", 3),
        (png(), "image/png", "chart.png", "inline", 3),
        (pdf(), "application/pdf", "report.pdf", "attachment", 0),
        (random_bytes(100_000), "application/octet-stream", "secret.bin", "attachment", 0),
    ]
    for data, content_type, name, disposition, thumbnails in files:
        body = await uploaded(alice, data, content_type, name)
        assert body["sha256"] == hashlib.sha256(data).hexdigest()
        assert body["size"] == len(data) and body["content_type"] == content_type
        assert body["filename"] == name and len(body["thumbnails"]) == thumbnails
        assert body["url"] == f"/media/{body['media_id']}"
        response = await fetch(alice, body["url"])
        assert response.status_code == 200
        assert hashlib.sha256(response.content).hexdigest() == body["sha256"]
        headers = response.headers
        assert headers["content-type"] == content_type
        assert headers["content-length"] == str(len(data))
        assert headers["accept-ranges"] == "bytes"
        assert headers["cache-control"] == "private, max-age=31536000, immutable"
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["content-security-policy"] == "sandbox"
        assert headers["etag"] == f'"{body["sha256"]}"'
        assert headers["content-disposition"].startswith(f'{disposition}; filename="{name}"')
    usage = (await alice.get("/media/usage")).json()
    assert usage["used_bytes"] == sum(len(data) for data, *_ in files)


async def test_a_200_mb_sparse_file_round_trips(start_server: ServerFactory,
                                                tmp_path: Path) -> None:
    server = await start_server(media={"max_upload_bytes": 300 * 1024 * 1024})
    path = sparse_file(tmp_path / "big.bin", 200 * 1024 * 1024)
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
        alice = await new_account(http)
        response = await http.post("/media/upload", content=file_chunks(path), headers={
            **alice.headers, "Content-Type": "application/octet-stream",
            "Content-Length": str(path.stat().st_size)})
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["sha256"] == sha256_of_file(path)
        digest, size = hashlib.sha256(), 0
        async with http.stream("GET", body["url"], headers=alice.headers) as download:
            assert download.status_code == 200
            async for chunk in download.aiter_bytes():
                digest.update(chunk)
                size += len(chunk)
        assert size == path.stat().st_size and digest.hexdigest() == body["sha256"]


async def test_range_requests(http: httpx.AsyncClient) -> None:
    alice = await new_account(http)
    data = random_bytes(1000)
    url = (await uploaded(alice, data, "application/octet-stream"))["url"]
    for header, start, end in (("bytes=0-0", 0, 0), ("bytes=999-999", 999, 999),
                               ("bytes=990-", 990, 999), ("bytes=-3", 997, 999),
                               ("bytes=500-5000", 500, 999)):
        response = await fetch(alice, url, Range=header)
        assert response.status_code == 206, header
        assert response.content == data[start:end + 1], header
        assert response.headers["content-range"] == f"bytes {start}-{end}/1000"
        assert response.headers["content-length"] == str(end - start + 1)
    for header in ("bytes=1000-", "bytes=5000-6000", "bytes=-0"):
        response = await fetch(alice, url, Range=header)
        assert_error(response, 416, "range_not_satisfiable")
        assert response.headers["content-range"] == "bytes */1000"
    # Several ranges (optional in the issue) are served whole, as RFC 9110 allows.
    whole = await fetch(alice, url, Range="bytes=0-1,5-6")
    assert whole.status_code == 200 and whole.content == data
    head = await alice.http.head(url, headers={**alice.headers, "Range": "bytes=10-19"})
    assert head.status_code == 206 and head.content == b""
    assert head.headers["content-length"] == "10"


async def test_etag_gives_304(http: httpx.AsyncClient) -> None:
    alice = await new_account(http)
    body = await uploaded(alice, png(), "image/png")
    etag = (await fetch(alice, body["url"])).headers["etag"]
    again = await fetch(alice, body["url"], **{"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    other = await fetch(alice, body["url"], **{"If-None-Match": '"something-else"'})
    assert other.status_code == 200


async def test_signed_links(start_server: ServerFactory) -> None:
    clock = ManualClock()
    server = await start_server(clock=clock)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice = await new_account(http)
        data = png()
        body = await uploaded(alice, data, "image/png")
        made = await alice.post(f"{body['url']}/link", {"ttl_s": 60})
        assert made.status_code == 200, made.text
        link = made.json()["url"]
        # No token needed.
        response = await http.get(link)
        assert response.status_code == 200 and response.content == data
        thumbnail = await http.get(link.replace("?", "/thumbnail?size=96&"))
        assert thumbnail.status_code == 200
        # Tampered with: each part is covered.
        url, query = link.split("?")
        params = dict(part.split("=") for part in query.split("&"))
        for name, value in (("sig", "0" * 64), ("u", "1"),
                            ("e", str(int(params["e"]) + 1000))):
            forged = "&".join(f"{k}={value if k == name else v}" for k, v in params.items())
            assert_error(await http.get(f"{url}?{forged}"), 403, "invalid_link")
        other = await uploaded(alice, random_bytes(10), "application/octet-stream")
        assert_error(await http.get(f"{other['url']}?{query}"), 403, "invalid_link")
        # Expired.
        clock.now += 61_000
        assert_error(await http.get(link), 403, "invalid_link")
        # Too long a life, and nobody else's media.
        assert_error(await alice.post(f"{body['url']}/link", {"ttl_s": 10**8}), 400)
        bob = await new_account(http)
        assert_error(await bob.post(f"{body['url']}/link", {"ttl_s": 60}), 404,
                     "unknown_media")


async def test_thumbnails_are_oriented_and_carry_no_gps(http: httpx.AsyncClient) -> None:
    alice = await new_account(http)
    original = jpeg_with_exif(200, 100)
    assert Image.open(io.BytesIO(original)).getexif().get_ifd(GPS_IFD)
    body = await uploaded(alice, original, "image/jpeg")
    # Shown rotated a quarter: portrait.
    assert (body["width"], body["height"]) == (100, 200)
    sizes = {thumb["size"]: thumb for thumb in body["thumbnails"]}
    assert set(sizes) == {96, 320, 640}
    assert (sizes[96]["width"], sizes[96]["height"]) == (96, 96)
    for size in (96, 320, 640):
        response = await fetch(alice, f"{body['url']}/thumbnail?size={size}")
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/webp"
        image = Image.open(io.BytesIO(response.content))
        image.load()
        if size != 96:
            assert image.height > image.width  # the orientation was applied
        # Red was on the left of the stored pixels: after the turn it is on top.
        red, _, blue = image.convert("RGB").getpixel((image.width // 2, 2))
        assert red > 200 and blue < 60
        assert not image.getexif()
        assert b"Exif" not in response.content and b"GPS" not in response.content
    assert_error(await fetch(alice, f"{body['url']}/thumbnail?size=50"), 404, "no_thumbnail")
    document = await uploaded(alice, pdf(), "application/pdf")
    assert_error(await fetch(alice, f"{document['url']}/thumbnail?size=96"), 404)


async def test_access_follows_the_messages_that_carry_the_media(
        http: httpx.AsyncClient) -> None:
    alice, bob, carol, stranger = [await new_account(http) for _ in range(4)]
    group = await alice.group("team", bob, carol)
    before = await uploaded(alice, png(), "image/png")
    after = await uploaded(alice, jpeg_with_exif(), "image/jpeg")
    # Nobody but the uploader until a message carries it.
    for account in (bob, stranger):
        assert_error(await fetch(account, before["url"]), 404, "unknown_media")
    sent = await send_with(alice, group, before["media_id"])
    assert sent.status_code == 201, sent.text
    for account in (bob, carol):
        response = await fetch(account, before["url"])
        assert response.status_code == 200 and response.content
        assert (await fetch(account, f"{before['url']}/thumbnail?size=96")).status_code == 200
    assert_error(await fetch(stranger, before["url"]), 404, "unknown_media")
    # History carries the attachment's metadata.
    page = (await bob.get(f"/messages/{group}")).json()
    [message] = [m for m in page["messages"] if m.get("attachments")]
    [attachment] = message["attachments"]
    assert attachment == {
        "media_id": before["media_id"], "kind": "image", "content_type": "image/png",
        "size": before["size"], "sha256": before["sha256"], "filename": "file",
        "width": 64, "height": 48, "thumbnails": [96, 320, 640]}
    # Carol is removed: she keeps what was sent to her, not what comes after.
    removed = await alice.post(f"/groups/{group}/remove", {"user_ids": [carol.user_id]})
    assert removed.status_code == 200
    assert (await send_with(alice, group, after["media_id"])).status_code == 201
    assert (await fetch(carol, before["url"])).status_code == 200
    assert_error(await fetch(carol, after["url"]), 404, "unknown_media")
    assert (await fetch(bob, after["url"])).status_code == 200
    # A member may forward what they received; a stranger may not send it at all.
    direct = await bob.direct_with(stranger)
    assert (await send_with(bob, direct, before["media_id"])).status_code == 201
    assert (await fetch(stranger, before["url"])).status_code == 200
    other = await stranger.direct_with(carol)
    assert_error(await send_with(stranger, other, after["media_id"]), 403, "media_forbidden")
    assert_error(await send_with(alice, group, "12345"), 403, "media_forbidden")


async def test_upload_limits(start_server: ServerFactory) -> None:
    server = await start_server(media={"max_upload_bytes": 4096, "quota_bytes": 10_000,
                                       "max_image_pixels": 10_000_000})
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice = await new_account(http)
        assert_error(await upload(alice, random_bytes(5000), "application/octet-stream"),
                     413, "media_too_large")
        # Without a Content-Length (chunked), the limit holds as the body arrives.

        async def chunks() -> Any:
            for _ in range(10):
                yield random_bytes(1000)

        chunked = await http.post("/media/upload", content=chunks(), headers={
            **alice.headers, "Content-Type": "application/octet-stream"})
        assert_error(chunked, 411, "length_required")
        for _ in range(2):
            await uploaded(alice, random_bytes(4000), "application/octet-stream")
        assert_error(await upload(alice, random_bytes(4000), "application/octet-stream"),
                     507, "quota_exceeded")
        assert (await alice.get("/media/usage")).json() == {"used_bytes": 8000,
                                                            "quota_bytes": 10_000}
        assert_error(await upload(alice, random_bytes(100), "image/png"), 415,
                     "unsupported_media_type")
        assert_error(await upload(alice, pdf(), "image/png"), 415, "unsupported_media_type")
        missing = await http.post("/media/upload", content=b"x", headers=alice.headers)
        assert_error(missing, 400)
        assert_error(await http.post("/media/upload", content=b"x", headers={
            "Content-Type": "application/octet-stream"}), 401)


async def test_a_decompression_bomb_is_refused(start_server: ServerFactory) -> None:
    server = await start_server(media={"max_image_pixels": 50_000_000})
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice = await new_account(http)
        data = bomb()
        assert len(data) < 1_000_000
        assert_error(await upload(alice, data, "image/png"), 400, "image_too_large")
        assert (await alice.get("/media/usage")).json()["used_bytes"] == 0


async def test_filenames_cannot_inject_headers(http: httpx.AsyncClient) -> None:
    alice = await new_account(http)
    body = await uploaded(alice, pdf(), "application/pdf",
                          "..%2F..%2Fsecret%2Frapport%20%C3%A9t%C3%A9.pdf")
    assert body["filename"] == "rapport été.pdf"
    response = await fetch(alice, body["url"])
    assert response.headers["content-disposition"] == (
        "attachment; filename=\"rapport _t_.pdf\"; "
        "filename*=UTF-8''rapport%20%C3%A9t%C3%A9.pdf")
    raw = await upload(alice, pdf(), "application/pdf", "a\";b.pdf")
    assert raw.status_code == 201
    served = (await fetch(alice, raw.json()["url"])).headers["content-disposition"]
    assert served.startswith('attachment; filename="a_;b.pdf"; ')


async def test_multipart_uploads_for_browsers(http: httpx.AsyncClient) -> None:
    alice = await new_account(http)
    data = png()
    response = await http.post("/media/upload", headers=alice.headers, data={"note": "x"},
                               files={"file": ("c:\\pics\\chart.png", data, "image/png")})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["filename"] == "chart.png" and body["content_type"] == "image/png"
    assert (await fetch(alice, body["url"])).content == data
    two = await http.post("/media/upload", headers=alice.headers, files=[
        ("file", ("a.png", data, "image/png")), ("file", ("b.png", data, "image/png"))])
    assert_error(two, 400, "invalid_field")


async def test_delete_drops_the_uploads_own_reference(server: RunningServer,
                                                      http: httpx.AsyncClient) -> None:
    alice, bob, stranger = [await new_account(http) for _ in range(3)]
    kept = await uploaded(alice, png(), "image/png")
    alone = await uploaded(alice, random_bytes(500), "application/octet-stream")
    conversation = await alice.direct_with(bob)
    assert (await send_with(alice, conversation, kept["media_id"])).status_code == 201
    assert_error(await bob.delete(kept["url"]), 403, "not_uploader")
    assert_error(await stranger.delete(kept["url"]), 404, "unknown_media")
    assert (await alice.delete(alone["url"])).status_code == 204
    assert_error(await fetch(alice, alone["url"]), 404)
    assert_error(await alice.delete(alone["url"]), 404)
    assert (await alice.delete(kept["url"])).status_code == 204
    # The message still carries it for its audience.
    assert (await fetch(bob, kept["url"])).status_code == 200
    assert (await alice.get("/media/usage")).json()["used_bytes"] == 0
    store = server.services.store
    assert store.get(records.MEDIA, int(alone["media_id"])) is None
    assert store.get(records.BLOBS, alone["sha256"]).refs == 0  # the GC deletes it


async def test_equal_bytes_share_one_blob(server: RunningServer,
                                          http: httpx.AsyncClient) -> None:
    alice, bob = await new_account(http), await new_account(http)
    data = random_bytes(2000)
    first = await uploaded(alice, data, "application/octet-stream")
    second = await uploaded(bob, data, "application/octet-stream")
    assert first["media_id"] != second["media_id"]
    assert first["sha256"] == second["sha256"]
    assert server.services.store.get(records.BLOBS, first["sha256"]).refs == 2
    # Bob's copy does not give him Alice's media.
    assert_error(await fetch(bob, first["url"]), 404)


async def test_quarantine(start_server: ServerFactory) -> None:
    server = await start_server(server={"admin_token": "a" * 32})
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice = await new_account(http)
        data = png()
        body = await uploaded(alice, data, "image/png")
        admin = {"Authorization": "Bearer " + "a" * 32}
        assert_error(await http.post("/admin/media/quarantine", json={
            "sha256": body["sha256"]}, headers=alice.headers), 401)
        response = await http.post("/admin/media/quarantine", json={
            "sha256": body["sha256"], "reason": "reported"}, headers=admin)
        assert response.status_code == 204
        assert_error(await fetch(alice, body["url"]), 451, "quarantined")
        assert_error(await fetch(alice, f"{body['url']}/thumbnail?size=96"), 451)
        assert_error(await upload(alice, data, "image/png"), 451, "quarantined")


async def test_live_frames_carry_attachments(server: RunningServer) -> None:
    from chatd.client import ApiError, ChatClient
    from tests.helpers import PASSWORD, fresh_handle

    async with ChatClient(server.url) as alice, ChatClient(server.url) as bob:
        for client in (alice, bob):
            handle = fresh_handle()
            await client.register(handle, PASSWORD, handle)
            await client.login(handle, PASSWORD, "laptop")
        assert bob.credentials is not None and alice.credentials is not None
        conversation = (await alice.open_direct(bob.credentials.user_id))["conversation_id"]
        async with bob.connect() as live:
            media = await alice.upload(png(), "image/png", filename="p.png")
            await alice.send(conversation, "see", attachments=[media["media_id"]])
            with trio.fail_after(5):
                while True:
                    event = await live.next_event()
                    if event["type"] == "message":
                        break
        [attachment] = event["message"]["attachments"]
        assert attachment["media_id"] == media["media_id"]
        assert attachment["filename"] == "p.png" and attachment["thumbnails"] == [96, 320, 640]
        # The WebSocket send frame takes attachments too, and refuses media not yours.
        async with alice.connect("msgpack") as sender, bob.connect() as live:
            sent = await sender.send(conversation, "again", attachments=[media["media_id"]])
            assert sent["type"] == "sent"
            with trio.fail_after(5):
                while (event := await live.next_event())["type"] != "message":
                    pass
            assert event["message"]["attachments"][0]["media_id"] == media["media_id"]
            bobs = await bob.upload(random_bytes(100), "application/octet-stream")
            try:
                await sender.send(conversation, "nope", attachments=[bobs["media_id"]])
                raise AssertionError("a send of someone else's media was accepted")
            except ApiError as exc:
                assert exc.code == "media_forbidden"


async def test_a_message_may_carry_a_client_made_thumbnail(http: httpx.AsyncClient) -> None:
    alice, bob = await new_account(http), await new_account(http)
    video = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41" + random_bytes(5000)
    clip = await uploaded(alice, video, "video/mp4", "clip.mp4")
    assert clip["content_type"] == "video/mp4" and clip["thumbnails"] == []
    poster = await uploaded(alice, jpeg_with_exif(), "image/jpeg", "poster.jpg")
    conversation = await alice.direct_with(bob)
    response = await alice.post("/messages/send", {
        "conversation_id": conversation, "client_msg_id": "v1", "content_type": "text/plain",
        "body": "a clip", "attachments": [{"media_id": clip["media_id"],
                                           "thumbnail_media_id": poster["media_id"]}]})
    assert response.status_code == 201, response.text
    [message] = (await bob.get(f"/messages/{conversation}")).json()["messages"]
    [attachment] = message["attachments"]
    assert attachment["kind"] == "video" and attachment["thumbnails"] == []
    assert attachment["thumbnail_media_id"] == poster["media_id"]
    # The reader may fetch the thumbnail too (it was attached with the message).
    assert (await fetch(bob, poster["url"])).status_code == 200
    assert (await fetch(bob, clip["url"])).headers["content-disposition"].startswith("inline")
    # A thumbnail must be the sender's to send, like any attachment.
    bobs = await uploaded(bob, png(), "image/png")
    refused = await alice.post("/messages/send", {
        "conversation_id": conversation, "client_msg_id": "v2", "content_type": "text/plain",
        "body": "x", "attachments": [{"media_id": clip["media_id"],
                                      "thumbnail_media_id": bobs["media_id"]}]})
    assert_error(refused, 403, "media_forbidden")
