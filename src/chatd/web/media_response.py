"""What a media download answers, sans-I/O: status, headers and which bytes.

Shared by the quart route (`web/routes_media.py`) and the direct download path
(`web/media_downloads.py`), so both answer the same request the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from chatd.domain import media as rules
from chatd.services.media import Blob

_IMMUTABLE = "private, max-age=31536000, immutable"


@dataclass(frozen=True, slots=True)
class Planned:
    status: int
    headers: list[tuple[str, str]]
    #: The bytes of the blob to send: `length` from `start` (0 for HEAD, 304, 302).
    start: int
    length: int
    #: What Content-Length says (the range's length even for HEAD).
    content_length: int


def plan(blob: Blob, *, method: str, range_header: str | None, if_none_match: str | None,
         redirect_to: str | None = None) -> Planned:
    """The answer to GET or HEAD of `blob`. Raises `RangeNotSatisfiable` (416)."""
    tag = rules.etag(blob.sha256)
    headers = [
        ("ETag", tag),
        ("Accept-Ranges", "bytes"),
        ("Cache-Control", _IMMUTABLE),
        ("X-Content-Type-Options", "nosniff"),
        # A blob opened as a page of this origin runs no script and reaches nothing.
        ("Content-Security-Policy", "sandbox"),
        ("Content-Disposition", rules.content_disposition(blob.content_type, blob.filename)),
    ]
    if rules.etag_matches(if_none_match, tag):
        return Planned(304, headers, 0, 0, 0)
    wanted = rules.parse_range(range_header, blob.size)
    if redirect_to is not None:
        return Planned(302, [*headers, ("Location", redirect_to)], 0, 0, 0)
    start, length, status = 0, blob.size, 200
    if wanted is not None:
        start, length, status = wanted.start, wanted.length, 206
        headers.append(("Content-Range", wanted.content_range))
    headers.append(("Content-Type", blob.content_type))
    return Planned(status, headers, start, 0 if method == "HEAD" else length, length)
