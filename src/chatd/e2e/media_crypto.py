"""Encrypted media, the sans-I/O core: chunked AEAD over a file's bytes.

A file is encrypted under a fresh random 32-byte key into chunks of `chunk_size`
plaintext bytes (the last one shorter, or empty for an empty file), each sealed with
XChaCha20-Poly1305 (IETF, libsodium through PyNaCl) and written one after another: the
ciphertext is `Σ (len(chunk) + 16)` bytes, with no header. Chunk `i` of `n` uses

    nonce = nonce_prefix (16 random bytes per file) || i (8 bytes, big-endian)
    AD    = b"chatd-media/1" || i (8 bytes, big-endian) || final (1 byte: 1 for i = n-1)

so a chunk moved to another place (reordered, dropped: every later index shifts) fails
to open, and so does a stream cut at a chunk boundary: its last chunk was sealed with
final = 0 and is opened with final = 1. Chunks after the final one fail the same way.
Each chunk is opened on its own, which is what lets a reader stream (and seek): the
plaintext a decryptor releases is authentic, but it is only the whole file once
`finish()` has returned, so writers keep it aside until then (`media.py` renames a
`.part` file into place only after it).

The key, the nonce prefix, the ciphertext's SHA-256 and the plaintext's size travel
inside the end-to-end encrypted message (`EncryptedMedia.to_content()`), never to the
server, which stores the ciphertext as an opaque `application/octet-stream` upload.

Everything here is bytes in, bytes out: no files, no sockets (`media.py` does the I/O).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_ABYTES,
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import CryptoError

VERSION = 1
#: What a message's content says it carries (`EncryptedMedia.to_content`).
CONTENT_TYPE = "chatd.encrypted-media"
#: 64 KiB: small enough that a reader holds little, large enough that the 16-byte tag
#: costs 0.02%. Any size from MIN to MAX_CHUNK_SIZE is accepted from a peer.
DEFAULT_CHUNK_SIZE = 64 * 1024
MIN_CHUNK_SIZE = 1024
MAX_CHUNK_SIZE = 4 * 1024 * 1024
KEY_BYTES = 32
NONCE_PREFIX_BYTES = 16
TAG_BYTES: int = crypto_aead_xchacha20poly1305_ietf_ABYTES
_AD_PREFIX = b"chatd-media/1"
#: The most a file may hold here: an index is 8 bytes, but nobody sends 2^63 chunks;
#: this bounds what a hostile `size` can make a reader expect.
MAX_SIZE = 1 << 40
_HEX64 = re.compile(r"[0-9a-f]{64}")


class MediaError(Exception):
    """Encrypted media that cannot be opened: tampered, truncated, reordered, the wrong
    key, or a description that does not fit the bytes. Nothing it released is the file."""


def _chunk_nonce(prefix: bytes, index: int) -> bytes:
    return prefix + index.to_bytes(8, "big")


def _chunk_ad(index: int, final: bool) -> bytes:
    return _AD_PREFIX + index.to_bytes(8, "big") + (b"\x01" if final else b"\x00")


def ciphertext_size(size: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """The bytes `size` plaintext bytes encrypt to (known before encrypting: an upload
    declares its Content-Length first)."""
    return size + chunk_count(size, chunk_size) * TAG_BYTES


def chunk_count(size: int, chunk_size: int) -> int:
    return max(1, math.ceil(size / chunk_size))


@dataclass(frozen=True)
class MediaKeys:
    """The secrets of one encrypted file."""

    key: bytes
    nonce_prefix: bytes
    chunk_size: int = DEFAULT_CHUNK_SIZE

    @classmethod
    def generate(cls, chunk_size: int = DEFAULT_CHUNK_SIZE) -> MediaKeys:
        return cls(os.urandom(KEY_BYTES), os.urandom(NONCE_PREFIX_BYTES), chunk_size)

    def __post_init__(self) -> None:
        if len(self.key) != KEY_BYTES or len(self.nonce_prefix) != NONCE_PREFIX_BYTES:
            raise MediaError(f"a media key is {KEY_BYTES} bytes and its nonce prefix "
                             f"{NONCE_PREFIX_BYTES}")
        if not MIN_CHUNK_SIZE <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise MediaError(f"chunk_size must be {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}, "
                             f"not {self.chunk_size}")


class MediaEncryptor:
    """Feed plaintext with `update()` (any pieces), then `finish()`; each returns the
    ciphertext ready so far. Holds at most one chunk: the last full chunk waits until
    more bytes prove it is not the final one."""

    def __init__(self, keys: MediaKeys | None = None) -> None:
        self.keys = keys or MediaKeys.generate()
        self._buffer = bytearray()
        self._index = 0
        self._size = 0
        self._digest = hashlib.sha256()
        self._finished = False

    def _seal(self, chunk: bytes, final: bool) -> bytes:
        sealed: bytes = crypto_aead_xchacha20poly1305_ietf_encrypt(
            chunk, _chunk_ad(self._index, final),
            _chunk_nonce(self.keys.nonce_prefix, self._index), self.keys.key)
        self._index += 1
        self._digest.update(sealed)
        return sealed

    def update(self, data: bytes) -> bytes:
        if self._finished:
            raise MediaError("update() after finish()")
        self._buffer += data
        self._size += len(data)
        size = self.keys.chunk_size
        out = []
        view, start = memoryview(self._buffer), 0
        # Strictly more than a chunk: only then is the next chunk surely not the last.
        while len(self._buffer) - start > size:
            out.append(self._seal(bytes(view[start:start + size]), final=False))
            start += size
        view.release()
        del self._buffer[:start]
        return b"".join(out)

    def finish(self) -> bytes:
        if self._finished:
            raise MediaError("finish() twice")
        self._finished = True
        sealed = self._seal(bytes(self._buffer), final=True)
        self._buffer.clear()
        return sealed

    @property
    def size(self) -> int:
        """Plaintext bytes fed so far."""
        return self._size

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the ciphertext (complete once finished)."""
        return self._digest.hexdigest()


class MediaDecryptor:
    """Feed ciphertext with `update()` (any pieces), then `finish()`; each returns the
    plaintext opened so far. `finish()` raises `MediaError` unless the stream ended with
    its final chunk, at the expected size and hash; so does `update()` on a chunk that
    does not open. Holds at most one sealed chunk."""

    def __init__(self, keys: MediaKeys, *, size: int | None = None,
                 sha256: str | None = None) -> None:
        self.keys = keys
        self._expected_size = size
        self._expected_sha256 = sha256
        self._buffer = bytearray()
        self._index = 0
        self._size = 0
        self._digest = hashlib.sha256()
        self._finished = False
        self._sealed_size = keys.chunk_size + TAG_BYTES

    def _open(self, sealed: bytes, final: bool) -> bytes:
        try:
            chunk: bytes = crypto_aead_xchacha20poly1305_ietf_decrypt(
                sealed, _chunk_ad(self._index, final),
                _chunk_nonce(self.keys.nonce_prefix, self._index), self.keys.key)
        except CryptoError:
            raise MediaError(
                f"chunk {self._index} does not open"
                + (" as the final chunk: the file is cut short" if final else
                   ": tampered, out of order, or the wrong key")) from None
        self._index += 1
        self._size += len(chunk)
        if self._expected_size is not None and self._size > self._expected_size:
            raise MediaError(f"more than the {self._expected_size} bytes announced")
        return chunk

    def update(self, data: bytes) -> bytes:
        if self._finished:
            raise MediaError("update() after finish()")
        self._digest.update(data)
        self._buffer += data
        out = []
        view, start, size = memoryview(self._buffer), 0, self._sealed_size
        try:
            while len(self._buffer) - start > size:
                out.append(self._open(bytes(view[start:start + size]), final=False))
                start += size
        finally:
            view.release()
        del self._buffer[:start]
        return b"".join(out)

    def finish(self) -> bytes:
        if self._finished:
            raise MediaError("finish() twice")
        self._finished = True
        if len(self._buffer) < TAG_BYTES:
            raise MediaError("the file is cut short: no final chunk")
        last = self._open(bytes(self._buffer), final=True)
        self._buffer.clear()
        if self._expected_size is not None and self._size != self._expected_size:
            raise MediaError(f"{self._size} bytes where {self._expected_size} were announced")
        if self._expected_sha256 is not None and \
                self._digest.hexdigest() != self._expected_sha256:
            raise MediaError("the ciphertext's SHA-256 is not the one announced")
        return last


def chunk_span(media: EncryptedMedia, index: int) -> tuple[int, int]:
    """Where chunk `index` lies in the blob: [start, end) bytes, for a ranged download
    (`Range: bytes=start-(end-1)`) that opens part of a file, e.g. to seek in a video."""
    count = chunk_count(media.size, media.keys.chunk_size)
    if not 0 <= index < count:
        raise MediaError(f"chunk {index} of a file of {count}")
    sealed = media.keys.chunk_size + TAG_BYTES
    return index * sealed, min((index + 1) * sealed, media.ciphertext_size)


def decrypt_chunk(media: EncryptedMedia, index: int, sealed: bytes) -> bytes:
    """Open chunk `index` alone (its bytes at `chunk_span`); the last chunk is opened as
    the final one, so a blob cut short still fails here."""
    chunk_span(media, index)
    final = index == chunk_count(media.size, media.keys.chunk_size) - 1
    try:
        chunk: bytes = crypto_aead_xchacha20poly1305_ietf_decrypt(
            sealed, _chunk_ad(index, final), _chunk_nonce(media.keys.nonce_prefix, index),
            media.keys.key)
    except CryptoError:
        raise MediaError(f"chunk {index} does not open") from None
    return chunk


def encrypt_bytes(data: bytes, keys: MediaKeys | None = None) -> tuple[MediaKeys, bytes, str]:
    """A small file at once (a thumbnail): (keys, ciphertext, its hex SHA-256)."""
    encryptor = MediaEncryptor(keys)
    ciphertext = encryptor.update(data) + encryptor.finish()
    return encryptor.keys, ciphertext, encryptor.sha256


def decrypt_bytes(media: EncryptedMedia, ciphertext: bytes) -> bytes:
    decryptor = media.decryptor()
    return decryptor.update(ciphertext) + decryptor.finish()


@dataclass(frozen=True)
class EncryptedMedia:
    """What a recipient needs to fetch and open one file: the secrets and the real
    metadata. It goes inside an end-to-end encrypted message (`to_content`), so the
    server never sees the key, the hash, the real type, the name or the size."""

    media_id: str
    keys: MediaKeys
    sha256: str
    size: int
    mime_type: str = "application/octet-stream"
    filename: str = ""
    width: int = 0
    height: int = 0
    #: A small encrypted preview (images), itself an upload of its own.
    thumbnail: EncryptedMedia | None = field(default=None)

    def decryptor(self) -> MediaDecryptor:
        return MediaDecryptor(self.keys, size=self.size, sha256=self.sha256)

    @property
    def ciphertext_size(self) -> int:
        return ciphertext_size(self.size, self.keys.chunk_size)

    def attachment(self) -> str | tuple[str, str]:
        """The message's attachment as `chatd.client` sends them (`attachments=[...]`):
        the media id, or (media id, thumbnail's media id). The server lets the
        conversation's members download the blobs a message carries, and only those."""
        if self.thumbnail is None:
            return self.media_id
        return self.media_id, self.thumbnail.media_id

    def to_content(self) -> dict[str, Any]:
        """A JSON-able dict, for the SDK to encrypt into a message."""
        content: dict[str, Any] = {
            "type": CONTENT_TYPE, "v": VERSION, "media_id": self.media_id,
            "key": _b64(self.keys.key), "nonce": _b64(self.keys.nonce_prefix),
            "chunk_size": self.keys.chunk_size, "sha256": self.sha256, "size": self.size,
            "mime_type": self.mime_type, "filename": self.filename}
        if self.width or self.height:
            content["width"], content["height"] = self.width, self.height
        if self.thumbnail is not None:
            content["thumbnail"] = self.thumbnail.to_content()
        return content

    @classmethod
    def from_content(cls, content: Any, *, nested: bool = False) -> EncryptedMedia:
        """Read what `to_content` made, from a peer: anything malformed is `MediaError`
        (never a KeyError or TypeError out of a message handler)."""
        if not isinstance(content, dict) or content.get("type") != CONTENT_TYPE:
            raise MediaError("not an encrypted media description")
        if content.get("v") != VERSION:
            raise MediaError(f"encrypted media version {content.get('v')!r} is not "
                             f"{VERSION}")
        media_id = _field(content, "media_id", str)
        if not media_id.isdigit():
            raise MediaError("media_id is not an id")
        size = _field(content, "size", int)
        chunk_size = _field(content, "chunk_size", int)
        sha256 = _field(content, "sha256", str)
        if not 0 <= size <= MAX_SIZE or not _HEX64.fullmatch(sha256):
            raise MediaError("size or sha256 out of range")
        keys = MediaKeys(_unb64(_field(content, "key", str)),
                         _unb64(_field(content, "nonce", str)), chunk_size)
        thumbnail = None
        if "thumbnail" in content:
            if nested:
                raise MediaError("a thumbnail has no thumbnail")
            thumbnail = cls.from_content(content["thumbnail"], nested=True)
        width, height = content.get("width", 0), content.get("height", 0)
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 20
                   for v in (width, height)):
            raise MediaError("width and height are small integers")
        return cls(media_id, keys, sha256, size,
                   mime_type=_field(content, "mime_type", str)[:255],
                   filename=_field(content, "filename", str)[:255],
                   width=width, height=height, thumbnail=thumbnail)


def _field(content: dict[str, Any], name: str, kind: type) -> Any:
    value = content.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise MediaError(f"{name} is missing or not a {kind.__name__}")
    return value


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MediaError("a key is not base64") from None
