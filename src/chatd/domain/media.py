"""Media rules, pure: filenames, content types, byte ranges, signed links.

Nothing here touches a file or a socket. The services decide *what* to store and serve;
this module decides what a client's filename may become, whether a declared content type
agrees with what the bytes are, which part of a blob a `Range` header asks for, and what
a signed link proves.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from chatd.domain.ids import CHATD_EPOCH_MS, COUNTER_BITS, SHARD_BITS
from chatd.errors import BadRequest, RangeNotSatisfiable, UnsupportedMediaType

#: Longest filename kept, in characters (after cleaning); longer ones keep their end,
#: where the extension is.
MAX_FILENAME = 200
#: The filename used when a client gives none (or nothing is left after cleaning).
DEFAULT_FILENAME = "file"
#: Stored and served opaque: no sniffing, no thumbnails (end-to-end encrypted media).
OPAQUE = "application/octet-stream"

_CONTENT_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,63}")
#: Served inline: what a browser shows as media. Everything else (SVG included, which can
#: carry script) is an attachment.
_INLINE = re.compile(r"(image/(jpeg|png|gif|webp|avif|heic|heif|bmp))|video/[a-z0-9.+-]+|"
                     r"audio/[a-z0-9.+-]+")
#: Types the sniffer knows by their bytes: declaring one of these for bytes it cannot
#: identify is a contradiction, not an unknown.
_SNIFFABLE_TOP = ("image/", "video/", "audio/")
_SNIFFABLE = frozenset({"application/pdf", "application/zip", "application/gzip"})
#: Names a sniffer may give for what clients call otherwise.
_ALIASES = {
    "image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg", "audio/mp3": "audio/mpeg",
    "audio/x-wav": "audio/wav", "audio/wave": "audio/wav", "audio/x-m4a": "audio/mp4",
    "audio/m4a": "audio/mp4", "video/x-m4v": "video/mp4", "application/x-pdf": "application/pdf",
}


def check_content_type(value: str) -> str:
    """A declared `Content-Type` without its parameters, lower-cased; 400 if malformed."""
    media_type = value.split(";", 1)[0].strip().lower()
    if not _CONTENT_TYPE.fullmatch(media_type):
        raise BadRequest(f"Content-Type: {value[:80]!r} is not a type/subtype",
                         code="invalid_field")
    return media_type


def canonical(media_type: str) -> str:
    return _ALIASES.get(media_type, media_type)


def decide_type(declared: str, sniffed: list[str]) -> str:
    """The content type to store for bytes declared `declared` that the sniffer took for
    `sniffed` (its candidates, best first; empty when it could not tell). Raises 415 when
    the two contradict each other.

    - `application/octet-stream` is stored opaque, whatever the bytes look like.
    - Bytes the sniffer identifies keep the declared type when it is one of the
      candidates (or the same kind of image, video or audio: containers overlap, as MP4
      and QuickTime do); otherwise the declaration is refused.
    - Bytes it cannot identify keep a declared type it would have recognised only if it
      is not one: text, say. Declaring `image/png` for them is refused.
    """
    declared = canonical(declared)
    if declared == OPAQUE:
        return OPAQUE
    candidates = [canonical(candidate) for candidate in sniffed]
    if candidates:
        if declared in candidates:
            return declared
        top = declared.split("/", 1)[0] + "/"
        if top in _SNIFFABLE_TOP and any(c.startswith(top) for c in candidates):
            return declared
        raise UnsupportedMediaType(
            f"Content-Type says {declared} but the content is {candidates[0]}; send the "
            f"real type, or {OPAQUE} to store it opaque")
    if declared.startswith(_SNIFFABLE_TOP) or declared in _SNIFFABLE:
        raise UnsupportedMediaType(
            f"Content-Type says {declared} but the content is not recognisable as one; "
            f"send the real type, or {OPAQUE} to store it opaque")
    return declared


def kind_of(content_type: str) -> str:
    """image, video, audio or file: what a client shows."""
    top = content_type.split("/", 1)[0]
    return top if top in ("image", "video", "audio") else "file"


def is_inline(content_type: str) -> bool:
    return _INLINE.fullmatch(content_type) is not None


def clean_filename(raw: str | None) -> str:
    """A client's filename as a label only: the last path part, NFC, without control,
    format or separator characters, at most `MAX_FILENAME` characters (the end kept)."""
    if not raw:
        return DEFAULT_FILENAME
    name = re.split(r"[/\\]", raw)[-1]
    name = unicodedata.normalize("NFC", name)
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] not in ("C", "Z")
                   or ch == " ")
    name = name.strip(" .")
    if len(name) > MAX_FILENAME:
        name = name[-MAX_FILENAME:]
    return name or DEFAULT_FILENAME


def content_disposition(content_type: str, filename: str) -> str:
    """RFC 6266: `inline` for images, video and audio, else `attachment`; the filename as
    an ASCII fallback (quoted, with `"` and `\\` replaced) and as RFC 5987 UTF-8, so no
    character of it can end the header or start another."""
    disposition = "inline" if is_inline(content_type) else "attachment"
    fallback = "".join(ch if 0x20 <= ord(ch) < 0x7F and ch not in '"\\%' else "_"
                       for ch in filename)
    return (f'{disposition}; filename="{fallback}"; '
            f"filename*=UTF-8''{quote(filename, safe='')}")


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Bytes `start` .. `start + length - 1` of a blob of `size` bytes."""

    start: int
    length: int
    size: int

    @property
    def end(self) -> int:
        return self.start + self.length - 1

    @property
    def content_range(self) -> str:
        return f"bytes {self.start}-{self.end}/{self.size}"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The single range a `Range` header asks of a blob of `size` bytes; None to serve
    the whole blob (no header, a unit other than bytes, several ranges or a malformed
    one: RFC 9110 lets a server ignore those). Raises 416 when no byte of it exists."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash or not (first.isdigit() or last.isdigit()) or \
            (first and not first.isdigit()) or (last and not last.isdigit()):
        return None
    if not first:  # a suffix: the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(f"the range asks for no bytes of {size}", size)
        start = max(0, size - suffix)
        return ByteRange(start, size - start, size)
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None  # invalid: ignored, the whole blob is served
    if start >= size:
        raise RangeNotSatisfiable(f"the range starts at {start}, past the end ({size} bytes)",
                                  size)
    end = min(end, size - 1)
    return ByteRange(start, end - start + 1, size)


def etag(sha256_hex: str) -> str:
    """The content's hash is its identity, so it is a strong validator."""
    return f'"{sha256_hex}"'


def etag_matches(if_none_match: str | None, tag: str) -> bool:
    if not if_none_match:
        return False
    return any(candidate.strip().removeprefix("W/") in (tag, "*")
               for candidate in if_none_match.split(","))


# -- records ------------------------------------------------------------------------------

#: Thumbnail sizes: (name, edge in pixels, crop to a square).
THUMBNAIL_SIZES: tuple[tuple[int, bool], ...] = ((96, True), (320, False), (640, False))


@dataclass(frozen=True, slots=True)
class Thumbnail:
    size: int
    sha256: str
    content_type: str
    width: int
    height: int
    length: int

    def to_record(self) -> list[Any]:
        return [self.size, self.sha256, self.content_type, self.width, self.height,
                self.length]

    @classmethod
    def from_record(cls, data: Any) -> Thumbnail:
        size, sha256, content_type, width, height, length = data
        return cls(size, sha256, content_type, width, height, length)


@dataclass(frozen=True, slots=True)
class MediaRecord:
    """One upload. Its blob (`sha256`) may be shared with other uploads of the same bytes;
    the media id is what access is granted to."""

    media_id: int
    uploader_id: int
    sha256: str
    size: int
    content_type: str
    filename: str
    created_at: int
    width: int = 0
    height: int = 0
    #: Stored as lists (msgpack); `thumbs` gives them as `Thumbnail`s.
    thumbnails: tuple[Any, ...] = ()
    #: The upload's own reference: held until the uploader deletes it (DELETE /media/{id}).
    own_ref: bool = True
    #: Messages that carry it (each message reference is one).
    message_refs: int = 0
    #: Profiles and groups that show it as their photo.
    photo_refs: int = 0

    @property
    def thumbs(self) -> list[Thumbnail]:
        return [Thumbnail.from_record(data) for data in self.thumbnails]

    def thumbnail(self, size: int) -> Thumbnail | None:
        return next((thumb for thumb in self.thumbs if thumb.size == size), None)

    @property
    def referenced(self) -> bool:
        return self.own_ref or self.message_refs > 0 or self.photo_refs > 0


@dataclass(frozen=True, slots=True)
class BlobRecord:
    """Stored bytes, by their sha256, and how many media records (and thumbnails) use them."""

    sha256: str
    size: int
    refs: int


@dataclass(frozen=True, slots=True)
class MediaRef:
    """On a conversation's owner: a message of the conversation carries the media. Who
    could read that message (its members when it was sent) may download the media, now
    and after they leave; members who join later cannot read it, so they are not here."""

    first_seq: int
    audience: list[int] = field(default_factory=list)
    #: How many of the conversation's messages carry it: the conversation's reference on
    #: the media's shard is dropped when the last one is deleted or expires. A record
    #: from before deletion existed reads as 1.
    carriers: int = 1


@dataclass(frozen=True, slots=True)
class Attaching:
    """One attachment a sender names: the media, and optionally a media of its own that
    stands as its thumbnail (what a client makes for video and documents, or for media
    the server cannot look into)."""

    media_id: int
    thumbnail_media_id: int = 0


def attachment_record(media: MediaRecord) -> dict[str, Any]:
    """What a message stores and shows of an attachment (ids as ints; rendering turns
    them into strings)."""
    return {"media_id": media.media_id, "kind": kind_of(media.content_type),
            "content_type": media.content_type, "size": media.size,
            "sha256": media.sha256, "filename": media.filename,
            "width": media.width, "height": media.height,
            "thumbnails": [thumb.size for thumb in media.thumbs]}


def random_snowflake(shard_number: int, now_ms: int, random_bits: int) -> int:
    """A media id: a Snowflake of this shard and this millisecond whose counter bits are
    random, so ids say nothing about the content and cannot be counted through (the
    caller retries the rare one already taken)."""
    return ((max(now_ms - CHATD_EPOCH_MS, 0) << (SHARD_BITS + COUNTER_BITS))
            | (shard_number << COUNTER_BITS) | (random_bits & ((1 << COUNTER_BITS) - 1)))


# -- signed links ---------------------------------------------------------------------------


def link_signature(secret: bytes, media_id: int, user_id: int, expires_at: int) -> str:
    """HMAC-SHA256 over (media, user, expiry), hex: a link works for that user's access
    to that media until that time, and changing any of the three breaks it."""
    message = f"media-link:{media_id}:{user_id}:{expires_at}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def link_is_valid(secret: bytes, media_id: int, user_id: int, expires_at: int,
                  signature: str, now_ms: int) -> bool:
    expected = link_signature(secret, media_id, user_id, expires_at)
    return hmac.compare_digest(expected, signature) and now_ms < expires_at
