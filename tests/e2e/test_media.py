"""Encrypted media through a real server: Alice encrypts a file and its thumbnail,
uploads the ciphertext, and sends the description (key, hash, type, name) inside an Olm
message; Bob opens the message, downloads and decrypts. The server's files hold neither
the file's bytes nor its name nor its key; a tampered or cut blob, or the wrong key, is
refused; a large file streams through both ways with bounded client memory."""

from __future__ import annotations

import base64
import json
import os
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import vodozemac

from chatd.client import ApiError, ChatClient, attachment_list
from chatd.e2e.media import (
    EncryptedMedia,
    MediaError,
    MediaKeys,
    chunk_span,
    decrypt_chunk,
    download_decrypted,
    fetch_decrypted,
    make_thumbnail,
    upload_encrypted,
)
from chatd.server import RunningServer
from tests.conftest import ServerFactory
from tests.helpers import Account, ServerProcess, new_account
from tests.media_files import jpeg_with_exif
from tests.web.test_compact import ADMIN, compact, files_holding

OLM = "application/vnd.chatd.olm"


class OlmPair:
    """Just enough Olm (vodozemac) for a description to travel end to end: Alice's
    outbound session to Bob's one-time key, and Bob's inbound one from her first message."""

    def __init__(self) -> None:
        self.alice, self.bob = vodozemac.Account(), vodozemac.Account()
        self.bob.generate_one_time_keys(1)
        [one_time_key] = self.bob.one_time_keys.values()
        self.outbound = self.alice.create_outbound_session(self.bob.curve25519_key,
                                                           one_time_key)

    def seal(self, content: dict[str, Any]) -> str:
        kind, ciphertext = self.outbound.encrypt(json.dumps(content).encode()).to_parts()
        return base64.b64encode(bytes([kind]) + ciphertext).decode()

    def open(self, body: str) -> dict[str, Any]:
        raw = base64.b64decode(body)
        message = vodozemac.AnyOlmMessage.from_parts(raw[0], raw[1:])
        pre_key = message.to_pre_key()
        assert pre_key is not None, "the first Olm message is a pre-key message"
        _, plaintext = self.bob.create_inbound_session(self.alice.curve25519_key, pre_key)
        content: dict[str, Any] = json.loads(plaintext)
        return content


async def client_of(server_url: str, account: Account) -> ChatClient:
    return ChatClient(server_url, token=account.token, timeout=60)


async def send_media(alice: Account, conversation: str, olm: OlmPair,
                     media: EncryptedMedia) -> int:
    response = await alice.post("/messages/send", {
        "conversation_id": conversation, "client_msg_id": uuid.uuid4().hex[:20],
        "content_type": OLM, "body": olm.seal(media.to_content()),
        "attachments": attachment_list([media.attachment()])})
    assert response.status_code == 201, response.text
    seq: int = response.json()["seq"]
    return seq


async def test_a_file_and_its_thumbnail_round_trip_and_the_server_keeps_no_plaintext(
        start_server: ServerFactory, tmp_path: Path) -> None:
    server: RunningServer = await start_server(server={"admin_token": ADMIN})
    photo = jpeg_with_exif(640, 480)
    secret = os.urandom(300_000)  # incompressible: any 64-byte window is unique
    source = tmp_path / "holiday.bin"
    source.write_bytes(photo + secret)
    filename = f"holiday-{uuid.uuid4().hex}.jpg"
    thumbnail = make_thumbnail(photo, 96)
    assert thumbnail is not None and thumbnail.startswith(b"\xff\xd8")
    olm = OlmPair()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice, bob = await new_account(http), await new_account(http)
        opened = await alice.post("/conversations/direct",
                                  {"user_id": bob.user_id, "encrypted": True})
        assert opened.status_code in (200, 201) and opened.json()["encrypted"], opened.text
        conversation = opened.json()["conversation_id"]
        accepted = await bob.post(f"/conversations/{conversation}/accept")
        assert accepted.status_code == 200, accepted.text
        async with await client_of(server.url, alice) as client:
            media = await upload_encrypted(client, source, "image/jpeg", filename=filename,
                                           thumbnail=thumbnail, width=640, height=480)
        seq = await send_media(alice, conversation, olm, media)
        control = f"control-{uuid.uuid4().hex}"
        plain = await alice.direct_with(await new_account(http))
        await alice.send(plain, control)  # a plaintext the scan must find
        refused = await alice.send(conversation, control)  # never in an encrypted chat
        assert refused.status_code == 400, refused.text

        # Bob: the message, its description, the file.
        history = (await bob.get(f"/messages/{conversation}")).json()["messages"]
        [message] = [m for m in history if m["seq"] == seq]
        [attachment] = message["attachments"]
        # What the server knows of the file: an opaque blob of the ciphertext's size.
        assert attachment["content_type"] == "application/octet-stream"
        assert attachment["filename"] == "file" and attachment["kind"] == "file"
        assert attachment["size"] == media.ciphertext_size
        assert attachment["sha256"] == media.sha256
        assert attachment["thumbnail_media_id"] == media.thumbnail.media_id  # type: ignore[union-attr]
        received = EncryptedMedia.from_content(olm.open(message["body"]))
        assert received == media
        async with await client_of(server.url, bob) as client:
            target = await download_decrypted(client, received, tmp_path / "got.jpg")
            assert target.read_bytes() == photo + secret
            assert received.filename == filename and received.mime_type == "image/jpeg"
            assert received.thumbnail is not None
            assert await fetch_decrypted(client, received.thumbnail) == thumbnail
        # A ranged read opens one chunk alone: a seek, without the whole blob.
        start, end = chunk_span(received, 2)
        ranged = await http.get(f"/media/{received.media_id}",
                                headers={**bob.headers, "Range": f"bytes={start}-{end - 1}"})
        assert ranged.status_code == 206
        size = received.keys.chunk_size
        assert decrypt_chunk(received, 2, ranged.content) == \
            (photo + secret)[2 * size:3 * size]

        # Every file, before the flush (the write-ahead log holds each write exactly:
        # it is never compressed, so the plaintext control must be found there) and
        # after it (the tables). It finds the stored ciphertext, so it reads media too.
        assert (tmp_path / "got.jpg").read_bytes() == photo + secret
        root = Path(server.services.config.storage.data_dir)
        assert any(name.endswith(".log") for name in files_holding(server, control))
        ciphertext_window = await _first_bytes_of_stored_blob(root, media.ciphertext_size)
        assert ciphertext_window and _holding(root, ciphertext_window)
        needles = [secret[n:n + 64] for n in range(0, len(secret) - 64, 37_501)]
        needles += [photo[200:264], thumbnail[200:264], filename.encode(),
                    media.keys.key, base64.b64encode(media.keys.key),
                    media.thumbnail.keys.key]  # type: ignore[union-attr]
        for flushed in (False, True):
            if flushed:
                await compact(http)
            for needle in needles:
                assert _holding(root, needle) == [], (flushed, needle)


async def _first_bytes_of_stored_blob(root: Path, size: int) -> bytes:
    [path] = [p for p in (root / "media").rglob("*") if p.is_file() and p.stat().st_size == size]
    return path.read_bytes()[1000:1064]


def _holding(root: Path, needle: bytes) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*")
                  if path.is_file() and needle in path.read_bytes())


async def test_tampered_cut_or_wrongly_keyed_media_is_refused_and_leaves_no_file(
        start_server: ServerFactory, tmp_path: Path) -> None:
    server = await start_server()
    data = os.urandom(200_000)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        alice = await new_account(http)
        async with await client_of(server.url, alice) as client:
            media = await upload_encrypted(client, data, "application/pdf",
                                           filename="report.pdf",
                                           keys=MediaKeys.generate(4096))
            good = await client.media_bytes(media.media_id)
            assert len(good) == media.ciphertext_size
            assert await fetch_decrypted(client, media) == data

            async def stored(blob: bytes) -> EncryptedMedia:
                """`media`'s description over other bytes (uploaded as the server
                would serve them were it hostile)."""
                uploaded = await client.upload(blob, "application/octet-stream")
                return EncryptedMedia(uploaded["media_id"], media.keys, media.sha256,
                                      media.size)

            flipped = bytearray(good)
            flipped[5000] ^= 0x80
            sealed_chunk = 4096 + 16
            chunks = [good[n:n + sealed_chunk] for n in range(0, len(good), sealed_chunk)]
            for blob in (bytes(flipped), good[:-sealed_chunk], good[:len(good) // 2],
                         b"".join([chunks[1], chunks[0], *chunks[2:]])):
                hostile = await stored(blob)
                with pytest.raises(MediaError):
                    await download_decrypted(client, hostile, tmp_path / "out.pdf")
                assert not (tmp_path / "out.pdf").exists()
                assert not (tmp_path / "out.pdf.part").exists()
            wrong = EncryptedMedia(media.media_id, MediaKeys.generate(4096), media.sha256,
                                   media.size)
            with pytest.raises(MediaError, match="does not open"):
                await fetch_decrypted(client, wrong)
            # The description's own hash, before any key: the same bytes, another hash.
            with pytest.raises(MediaError, match="SHA-256"):
                await fetch_decrypted(client, EncryptedMedia(
                    media.media_id, media.keys, "0" * 64, media.size))
            with pytest.raises(ApiError) as unknown:
                await fetch_decrypted(client, EncryptedMedia(
                    "12345", media.keys, media.sha256, media.size))
            assert unknown.value.status == 404


async def test_a_large_file_streams_both_ways_in_bounded_client_memory(
        tmp_path: Path) -> None:
    size = 80 << 20
    source = tmp_path / "large.bin"
    with source.open("wb") as file:
        block = os.urandom(1 << 20)
        for n in range(size >> 20):
            file.write(block[n:] + block[:n])  # no two MiBs alike
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log",
                           {"CHATD_MEDIA_MAX_UPLOAD_BYTES": str(200 << 20)})
    try:
        url = await server.ready()
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            alice = await new_account(http)
        async with await client_of(url, alice) as client:
            await upload_encrypted(client, b"warm up", "text/plain")  # imports, pools
            tracemalloc.start()
            try:
                media = await upload_encrypted(client, source, "video/mp4")
                _, upload_peak = tracemalloc.get_traced_memory()
                tracemalloc.reset_peak()
                target = await download_decrypted(client, media, tmp_path / "copy.bin")
                _, download_peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
    finally:
        server.kill()
    print(f"client peak: upload {upload_peak / 2**20:.1f} MiB, "
          f"download {download_peak / 2**20:.1f} MiB of an {size >> 20} MiB file")
    assert media.size == size and target.stat().st_size == size
    assert _same_file(source, target)
    # A few MiB of pieces in flight, never the file (80 MiB).
    assert upload_peak < 12 << 20 and download_peak < 12 << 20


def _same_file(a: Path, b: Path) -> bool:
    with a.open("rb") as left, b.open("rb") as right:
        while chunk := left.read(1 << 20):
            if chunk != right.read(len(chunk)):
                return False
        return right.read(1) == b""
