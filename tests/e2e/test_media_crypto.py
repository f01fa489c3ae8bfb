"""The encrypted-media format, sans I/O: round trips at every size that matters, and
every way of changing the ciphertext (a flipped bit, a chunk dropped, moved, repeated or
appended, the stream cut short anywhere) or opening it wrongly (another key, another
nonce, another announced size or hash) is refused."""

from __future__ import annotations

import os
from typing import Any

import pytest

from chatd.e2e.media_crypto import (
    DEFAULT_CHUNK_SIZE,
    MIN_CHUNK_SIZE,
    TAG_BYTES,
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

CHUNK = MIN_CHUNK_SIZE  # small chunks: many of them in little data
SEALED = CHUNK + TAG_BYTES


def sealed(data: bytes) -> tuple[EncryptedMedia, bytes]:
    keys, ciphertext, sha256 = encrypt_bytes(data, MediaKeys.generate(CHUNK))
    return EncryptedMedia("1", keys, sha256, len(data)), ciphertext


def open_unchecked(media: EncryptedMedia, ciphertext: bytes) -> bytes:
    """Only the chunks' own authentication: no announced size or hash to lean on."""
    decryptor = MediaDecryptor(media.keys)
    return decryptor.update(ciphertext) + decryptor.finish()


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK,
                                  5 * CHUNK + 17])
def test_round_trip_in_any_pieces(size: int) -> None:
    data = os.urandom(size)
    media, ciphertext = sealed(data)
    assert len(ciphertext) == ciphertext_size(size, CHUNK) == media.ciphertext_size
    assert decrypt_bytes(media, ciphertext) == data
    for piece in (1, 7, SEALED - 1, SEALED, SEALED + 1, 10 * SEALED):
        encryptor = MediaEncryptor(media.keys)
        again = b"".join(encryptor.update(data[n:n + piece])
                         for n in range(0, size, piece)) + encryptor.finish()
        assert again == ciphertext  # same keys, same bytes: the format is deterministic
        decryptor = media.decryptor()
        opened = b"".join(decryptor.update(ciphertext[n:n + piece])
                          for n in range(0, len(ciphertext), piece)) + decryptor.finish()
        assert opened == data


def test_the_ciphertext_shows_nothing_of_the_plaintext() -> None:
    data = b"A" * (4 * CHUNK)
    _, ciphertext = sealed(data)
    assert b"AAAAAAAA" not in ciphertext
    # Equal plaintext chunks seal differently (their index is in the nonce).
    chunks = [ciphertext[n:n + SEALED] for n in range(0, len(ciphertext), SEALED)]
    assert len(set(chunks)) == len(chunks)
    # A fresh key per file: the same file twice makes unrelated ciphertexts.
    assert sealed(data)[1] != ciphertext


def test_a_flipped_bit_anywhere_is_refused() -> None:
    media, ciphertext = sealed(os.urandom(3 * CHUNK + 100))
    for position in (0, CHUNK, SEALED + 5, len(ciphertext) - 1):
        changed = bytearray(ciphertext)
        changed[position] ^= 0x01
        with pytest.raises(MediaError, match="does not open"):
            open_unchecked(media, bytes(changed))


def chunks_of(ciphertext: bytes) -> list[bytes]:
    return [ciphertext[n:n + SEALED] for n in range(0, len(ciphertext), SEALED)]


@pytest.mark.parametrize("change", ["drop first", "drop middle", "drop last", "swap",
                                    "repeat", "append", "last moved first"])
def test_chunks_dropped_moved_or_added_are_refused(change: str) -> None:
    media, ciphertext = sealed(os.urandom(4 * CHUNK + 10))
    parts = chunks_of(ciphertext)
    assert len(parts) == 5
    _, other = sealed(os.urandom(CHUNK))
    changed = {"drop first": parts[1:], "drop middle": parts[:2] + parts[3:],
               "drop last": parts[:-1], "swap": [parts[1], parts[0], *parts[2:]],
               "repeat": [*parts[:3], parts[2], *parts[3:]],
               "append": [*parts, other[:SEALED]],
               "last moved first": [parts[-1], *parts[:-1]]}[change]
    with pytest.raises(MediaError):
        open_unchecked(media, b"".join(changed))


def test_a_stream_cut_anywhere_is_refused() -> None:
    data = os.urandom(3 * CHUNK)
    media, ciphertext = sealed(data)
    # At a chunk boundary every chunk that remains opens: only the final flag tells.
    for cut in (0, 5, TAG_BYTES, SEALED, SEALED + 1, 2 * SEALED, len(ciphertext) - 1):
        with pytest.raises(MediaError):
            open_unchecked(media, ciphertext[:cut])
    with pytest.raises(MediaError, match="cut short"):
        open_unchecked(media, ciphertext[:2 * SEALED])


def test_the_plaintext_released_before_a_cut_is_a_true_prefix() -> None:
    data = os.urandom(4 * CHUNK)
    media, ciphertext = sealed(data)
    decryptor = media.decryptor()
    released = decryptor.update(ciphertext[:3 * SEALED])
    assert data.startswith(released) and len(released) == 2 * CHUNK
    with pytest.raises(MediaError):
        decryptor.finish()


def test_the_wrong_key_or_nonce_is_refused() -> None:
    media, ciphertext = sealed(os.urandom(2 * CHUNK))
    for keys in (MediaKeys(os.urandom(32), media.keys.nonce_prefix, CHUNK),
                 MediaKeys(media.keys.key, os.urandom(16), CHUNK),
                 MediaKeys.generate(CHUNK)):
        with pytest.raises(MediaError, match="does not open"):
            MediaDecryptor(keys).update(ciphertext)
    # Another chunk size reads the chunks at the wrong boundaries.
    with pytest.raises(MediaError):
        open_unchecked(EncryptedMedia("1", MediaKeys(media.keys.key, media.keys.nonce_prefix,
                                                     2 * CHUNK), media.sha256, media.size),
                       ciphertext)


def test_the_announced_size_and_hash_are_checked() -> None:
    data = os.urandom(CHUNK + 3)
    media, ciphertext = sealed(data)
    for wrong in (EncryptedMedia("1", media.keys, media.sha256, media.size + 1),
                  EncryptedMedia("1", media.keys, media.sha256, media.size - 1),
                  EncryptedMedia("1", media.keys, "0" * 64, media.size)):
        with pytest.raises(MediaError):
            decrypt_bytes(wrong, ciphertext)
    assert decrypt_bytes(media, ciphertext) == data


def test_misuse_is_refused() -> None:
    encryptor = MediaEncryptor()
    encryptor.finish()
    with pytest.raises(MediaError):
        encryptor.update(b"x")
    with pytest.raises(MediaError):
        encryptor.finish()
    with pytest.raises(MediaError):
        MediaKeys(b"short", os.urandom(16))
    with pytest.raises(MediaError):
        MediaKeys(os.urandom(32), os.urandom(16), chunk_size=10)


def test_the_content_round_trips_and_carries_every_secret() -> None:
    keys, ciphertext, sha256 = encrypt_bytes(b"a thumbnail")
    thumb = EncryptedMedia("22", keys, sha256, 11, mime_type="image/jpeg")
    media = EncryptedMedia("11", MediaKeys.generate(), "ab" * 32, 5000,
                           mime_type="image/png", filename="café.png", width=800,
                           height=600, thumbnail=thumb)
    content = media.to_content()
    assert EncryptedMedia.from_content(content) == media
    assert content["chunk_size"] == DEFAULT_CHUNK_SIZE
    assert media.attachment() == ("11", "22")
    assert thumb.attachment() == "22"
    assert decrypt_bytes(EncryptedMedia.from_content(content).thumbnail  # type: ignore[arg-type]
                         , ciphertext) == b"a thumbnail"


def _bad_contents() -> list[Any]:
    good = EncryptedMedia("11", MediaKeys.generate(), "ab" * 32, 5).to_content()
    return [None, [], "x", {}, {**good, "type": "other"}, {**good, "v": 2},
            {**good, "media_id": 11}, {**good, "media_id": "../x"}, {**good, "size": -1},
            {**good, "size": True}, {**good, "size": 1 << 50}, {**good, "sha256": "zz"},
            {**good, "key": "not base64!"}, {**good, "key": "AAAA"},
            {**good, "nonce": 7}, {**good, "chunk_size": 1},
            {**good, "chunk_size": 1 << 30}, {**good, "mime_type": None},
            {**good, "filename": ["x"]}, {**good, "width": -1}, {**good, "height": "9"},
            {**good, "thumbnail": "x"}, {**good, "thumbnail": {**good, "thumbnail": good}}]


@pytest.mark.parametrize("content", _bad_contents())
def test_a_malformed_description_is_a_media_error(content: Any) -> None:
    with pytest.raises(MediaError):
        EncryptedMedia.from_content(content)


def test_any_chunk_opens_alone_at_its_span_and_only_there() -> None:
    data = os.urandom(3 * CHUNK + 500)
    media, ciphertext = sealed(data)
    for index in range(4):
        start, end = chunk_span(media, index)
        assert decrypt_chunk(media, index, ciphertext[start:end]) == \
            data[index * CHUNK:(index + 1) * CHUNK]
    start, end = chunk_span(media, 1)
    with pytest.raises(MediaError):
        decrypt_chunk(media, 2, ciphertext[start:end])  # moved
    # The last full chunk of a file cut there is not its final chunk.
    short = EncryptedMedia("1", media.keys, media.sha256, 2 * CHUNK)
    with pytest.raises(MediaError):
        decrypt_chunk(short, 1, ciphertext[SEALED:2 * SEALED])
    for index in (-1, 4):
        with pytest.raises(MediaError):
            chunk_span(media, index)
