"""Encrypted media over `chatd.client`: upload a file encrypted, download and open one.

    media = await upload_encrypted(client, Path("beach.jpg"), "image/jpeg",
                                   thumbnail=make_thumbnail(Path("beach.jpg")))
    # media.to_content() goes inside an end-to-end encrypted message, and
    # media.attachment() in that message's `attachments` (so its readers may fetch it):
    await e2e.send(conversation_id, media.to_content(), attachments=[media.attachment()])
    ...
    media = EncryptedMedia.from_content(decrypted_content)
    await download_decrypted(client, media, Path("beach.jpg"))

The server gets ciphertext as `application/octet-stream` with no file name: it stores it
opaque (no sniffing, no thumbnails) and learns its padded size only. Both directions
stream in pieces of about a MiB (a file is never held whole in memory), and a download
becomes the destination only once the last chunk, the size and the hash check out: until
then it is `destination.part`, deleted when it fails.

The crypto is sans-I/O in `media_crypto.py`; this module is its I/O.
"""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator
from pathlib import Path

import trio

from chatd.client import ChatClient
from chatd.e2e.media_crypto import (
    CONTENT_TYPE,
    DEFAULT_CHUNK_SIZE,
    EncryptedMedia,
    MediaDecryptor,
    MediaEncryptor,
    MediaError,
    MediaKeys,
    chunk_span,
    ciphertext_size,
    decrypt_bytes,
    decrypt_chunk,
    encrypt_bytes,
)

__all__ = ["CONTENT_TYPE", "EncryptedMedia", "MediaDecryptor", "MediaEncryptor",
           "MediaError", "MediaKeys", "chunk_span", "decrypt_bytes", "decrypt_chunk",
           "download_decrypted", "encrypt_bytes", "fetch_decrypted", "make_thumbnail",
           "upload_encrypted"]

#: Plaintext read from disk per step: a multiple of the chunk size.
READ_SIZE = 16 * DEFAULT_CHUNK_SIZE
OPAQUE = "application/octet-stream"


async def upload_encrypted(client: ChatClient, source: Path | bytes, mime_type: str, *,
                           filename: str | None = None, thumbnail: bytes | None = None,
                           width: int = 0, height: int = 0,
                           keys: MediaKeys | None = None) -> EncryptedMedia:
    """Encrypt `source` (a file, streamed; or bytes) under a fresh key and upload the
    ciphertext; with `thumbnail` (bytes of a small image, e.g. `make_thumbnail`), that
    too, encrypted under a key of its own. The result's `to_content()` says everything a
    recipient needs; none of it reached the server."""
    keys = keys or MediaKeys.generate()
    encryptor = MediaEncryptor(keys)
    if isinstance(source, Path):
        size = (await trio.Path(source).stat()).st_size
        name = source.name if filename is None else filename
        chunks = _encrypt_file(source, encryptor, size)
    else:
        size, name = len(source), filename or ""
        chunks = _encrypt_memory(source, encryptor)
    uploaded = await client.upload_stream(chunks, ciphertext_size(size, keys.chunk_size),
                                          OPAQUE)
    if encryptor.size != size:
        raise MediaError(f"{name or 'the file'} changed while it was uploaded")
    if uploaded.get("sha256") != encryptor.sha256:
        raise MediaError("the server stored other bytes than were sent")
    preview = None
    if thumbnail is not None:
        thumb_keys, sealed, sealed_sha256 = encrypt_bytes(thumbnail)
        thumb = await client.upload(sealed, OPAQUE)
        preview = EncryptedMedia(thumb["media_id"], thumb_keys, sealed_sha256,
                                 len(thumbnail), mime_type=_thumbnail_type(thumbnail))
    return EncryptedMedia(uploaded["media_id"], keys, encryptor.sha256, size,
                          mime_type=mime_type, filename=name, width=width, height=height,
                          thumbnail=preview)


async def _encrypt_file(path: Path, encryptor: MediaEncryptor, size: int
                        ) -> AsyncIterator[bytes]:
    left = size
    async with await trio.open_file(path, "rb") as file:
        # Exactly `size` bytes: the upload declared them, and a file that grows while it
        # is read must not overrun its Content-Length (one that shrinks is caught above).
        while left > 0 and (piece := await file.read(min(READ_SIZE, left))):
            left -= len(piece)
            if sealed := encryptor.update(piece):
                yield sealed
    yield encryptor.finish()


async def _encrypt_memory(data: bytes, encryptor: MediaEncryptor) -> AsyncIterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(data), READ_SIZE):
        if sealed := encryptor.update(bytes(view[start:start + READ_SIZE])):
            yield sealed
        await trio.lowlevel.checkpoint()
    yield encryptor.finish()


async def download_decrypted(client: ChatClient, media: EncryptedMedia,
                             destination: Path) -> Path:
    """Fetch `media`'s ciphertext and write the opened file to `destination`, streaming.
    `MediaError` (and no file) when anything does not check out."""
    partial = destination.with_name(destination.name + ".part")
    decryptor = media.decryptor()
    try:
        async with await trio.open_file(partial, "wb") as file, \
                client.media_stream(media.media_id) as chunks:
            async for chunk in chunks:
                if plain := decryptor.update(chunk):
                    await file.write(plain)
            await file.write(decryptor.finish())
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, destination)
    return destination


async def fetch_decrypted(client: ChatClient, media: EncryptedMedia, *,
                          limit: int = 16 << 20) -> bytes:
    """A small media (a thumbnail, a voice note) opened in memory; `MediaError` for one
    announced larger than `limit`."""
    if media.size > limit:
        raise MediaError(f"{media.size} bytes is more than {limit} to hold in memory")
    decryptor = media.decryptor()
    parts = []
    async with client.media_stream(media.media_id) as chunks:
        async for chunk in chunks:
            parts.append(decryptor.update(chunk))
    parts.append(decryptor.finish())
    return b"".join(parts)


def make_thumbnail(source: Path | bytes, max_px: int = 320) -> bytes | None:
    """A JPEG preview at most `max_px` on a side, made on the client (the server cannot
    see encrypted images); None when `source` is not an image Pillow reads."""
    from PIL import Image, ImageOps  # Pillow is loaded only by clients that make previews

    try:
        with Image.open(source if isinstance(source, Path) else io.BytesIO(source)) as image:
            if image.width * image.height > 50_000_000:
                return None  # a decompression bomb: no preview
            image.draft("RGB", (max_px, max_px))
            preview = ImageOps.exif_transpose(image).convert("RGB")
            preview.thumbnail((max_px, max_px))
            out = io.BytesIO()
            preview.save(out, "JPEG", quality=80)
            return out.getvalue()
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def _thumbnail_type(data: bytes) -> str:
    return "image/jpeg" if data.startswith(b"\xff\xd8") else (
        "image/png" if data.startswith(b"\x89PNG") else (
            "image/webp" if data[8:12] == b"WEBP" else OPAQUE))
