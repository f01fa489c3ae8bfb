"""Encrypted media between SDK clients over a real server: the description rides in an
`E2EClient.send` (Olm in a direct chat, Megolm in a group of three), the recipients
decrypt the message, then download and open the file and its thumbnail. A member
removed before the send cannot fetch the blob at all."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chatd.client import ApiError
from chatd.e2e.media import (
    EncryptedMedia,
    download_decrypted,
    fetch_decrypted,
    make_thumbnail,
    upload_encrypted,
)
from tests.conftest import ServerFactory
from tests.e2e.sdk_helpers import SdkUser, next_decrypted, sdk_user
from tests.e2e.test_sdk import open_direct
from tests.helpers import UNLIMITED_SENDS
from tests.media_files import jpeg_with_exif


async def share(sender: SdkUser, conversation: str, tmp_path: Path) -> tuple[bytes, bytes,
                                                                             EncryptedMedia]:
    photo = jpeg_with_exif(400, 300) + os.urandom(50_000)
    source = tmp_path / f"photo-{os.urandom(4).hex()}.jpg"
    source.write_bytes(photo)
    thumbnail = make_thumbnail(photo)
    assert thumbnail is not None
    media = await upload_encrypted(sender.chat, source, "image/jpeg", thumbnail=thumbnail,
                                   width=400, height=300)
    await sender.e2e.send(conversation, media.to_content(),
                          attachments=[media.attachment()])
    return photo, thumbnail, media


async def test_media_round_trip_between_two_sdk_clients(start_server: ServerFactory,
                                                        tmp_path: Path) -> None:
    server = await start_server(ratelimits=UNLIMITED_SENDS)
    async with sdk_user(server.url, tmp_path) as alice, \
            sdk_user(server.url, tmp_path) as bob:
        conversation = await open_direct(alice, bob)
        async with bob.chat.connect() as bob_live:
            photo, thumbnail, sent = await share(alice, conversation, tmp_path)
            got = await next_decrypted(bob, bob_live)
        assert got.message["content_type"] == "application/vnd.chatd.olm"
        media = EncryptedMedia.from_content(got.content)
        assert media == sent and media.filename.endswith(".jpg")
        target = await download_decrypted(bob.chat, media, tmp_path / "bob.jpg")
        assert target.read_bytes() == photo
        assert media.thumbnail is not None
        assert await fetch_decrypted(bob.chat, media.thumbnail) == thumbnail


async def test_media_in_a_megolm_group_reaches_members_and_not_a_removed_one(
        start_server: ServerFactory, tmp_path: Path) -> None:
    server = await start_server(ratelimits=UNLIMITED_SENDS)
    async with sdk_user(server.url, tmp_path) as alice, \
            sdk_user(server.url, tmp_path) as bob, \
            sdk_user(server.url, tmp_path) as carol:
        group = (await alice.chat.create_group("photos", [bob.user_id, carol.user_id],
                                               encrypted=True))["conversation_id"]
        assert carol.user_id in {m["user_id"] for m in await alice.chat.members(group)}
        await alice.chat.request("POST", f"/groups/{group}/remove",
                                 {"user_ids": [carol.user_id]})
        async with bob.chat.connect() as bob_live:
            photo, _, sent = await share(alice, group, tmp_path)
            got = await next_decrypted(bob, bob_live)
        assert got.message["content_type"] == "application/vnd.chatd.megolm"
        media = EncryptedMedia.from_content(got.content)
        assert media == sent
        target = await download_decrypted(bob.chat, media, tmp_path / "bob.jpg")
        assert target.read_bytes() == photo
        # Carol left before the message: the server does not let her fetch even the
        # ciphertext (and she has no key for the message that names it).
        with pytest.raises(ApiError) as refused:
            await fetch_decrypted(carol.chat, media)
        assert refused.value.status == 404
