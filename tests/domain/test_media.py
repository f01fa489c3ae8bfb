"""The pure media rules: filenames, dispositions, type decisions, ranges, signed links."""

from __future__ import annotations

import pytest

from chatd.domain import media
from chatd.errors import BadRequest, RangeNotSatisfiable, UnsupportedMediaType


@pytest.mark.parametrize(("raw", "expected"), [
    ("../../etc/passwd", "passwd"),
    ("C:\\Users\\me\\photo.jpg", "photo.jpg"),
    ("evil\r\nSet-Cookie: a=b.txt", "evilSet-Cookie: a=b.txt"),
    ("\u202egnp.exe", "gnp.exe"),
    ("  .hidden  ", "hidden"),
    ("", media.DEFAULT_FILENAME),
    (None, media.DEFAULT_FILENAME),
    ("/", media.DEFAULT_FILENAME),
    ("ok name.pdf", "ok name.pdf"),
])
def test_filenames_are_labels_only(raw: str | None, expected: str) -> None:
    assert media.clean_filename(raw) == expected


def test_a_long_filename_keeps_its_end() -> None:
    name = media.clean_filename("a" * 500 + ".pdf")
    assert len(name) == media.MAX_FILENAME and name.endswith(".pdf")


def test_content_disposition_cannot_carry_a_header() -> None:
    value = media.content_disposition("application/pdf", 'a"b\\c%d é.pdf')
    assert value == ("attachment; filename=\"a_b_c_d _.pdf\"; "
                     "filename*=UTF-8''a%22b%5Cc%25d%20%C3%A9.pdf")
    assert "\r" not in value and "\n" not in value
    assert media.content_disposition("image/png", "x.png").startswith("inline;")
    assert media.content_disposition("video/mp4", "x.mp4").startswith("inline;")
    # SVG can carry script: never inline.
    assert media.content_disposition("image/svg+xml", "x.svg").startswith("attachment;")


@pytest.mark.parametrize(("declared", "sniffed", "stored"), [
    ("image/jpeg", ["image/jpeg"], "image/jpeg"),
    ("image/jpg", ["image/jpeg"], "image/jpeg"),
    ("video/quicktime", ["video/mp4"], "video/quicktime"),
    ("text/plain", [], "text/plain"),
    ("application/octet-stream", ["image/png"], "application/octet-stream"),
    ("application/octet-stream", [], "application/octet-stream"),
])
def test_declared_types_that_agree(declared: str, sniffed: list[str], stored: str) -> None:
    assert media.decide_type(declared, sniffed) == stored


@pytest.mark.parametrize(("declared", "sniffed"), [
    ("image/png", ["application/pdf"]),
    ("image/png", []),
    ("application/pdf", []),
    ("text/html", ["image/png"]),
    ("video/mp4", ["image/jpeg"]),
])
def test_declared_types_that_contradict_are_refused(declared: str, sniffed: list[str]) -> None:
    with pytest.raises(UnsupportedMediaType):
        media.decide_type(declared, sniffed)


def test_content_type_header() -> None:
    assert media.check_content_type("Image/JPEG; charset=x") == "image/jpeg"
    with pytest.raises(BadRequest):
        media.check_content_type("not a type")


@pytest.mark.parametrize(("header", "expected"), [
    (None, None),
    ("bytes=0-0", (0, 1)),           # the first byte
    ("bytes=99-99", (99, 1)),        # the last byte
    ("bytes=99-", (99, 1)),
    ("bytes=-1", (99, 1)),           # a suffix
    ("bytes=-500", (0, 100)),        # a suffix longer than the blob: all of it
    ("bytes=10-1000", (10, 90)),     # past the end: cut at the end
    ("bytes=5-4", None),             # invalid: ignored
    ("bytes=0-1,5-6", None),         # several ranges: served whole (allowed by RFC 9110)
    ("items=0-1", None),
    ("bytes=abc", None),
])
def test_ranges(header: str | None, expected: tuple[int, int] | None) -> None:
    found = media.parse_range(header, 100)
    assert (None if found is None else (found.start, found.length)) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=100-200", "bytes=-0"])
def test_unsatisfiable_ranges(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable) as caught:
        media.parse_range(header, 100)
    assert caught.value.size == 100


def test_etags() -> None:
    tag = media.etag("ab" * 32)
    assert media.etag_matches(tag, tag)
    assert media.etag_matches(f'"x", W/{tag}', tag)
    assert media.etag_matches("*", tag)
    assert not media.etag_matches('"other"', tag)
    assert not media.etag_matches(None, tag)


def test_media_ids_are_snowflakes_of_their_shard_with_random_low_bits() -> None:
    from chatd.domain.ids import CHATD_EPOCH_MS, COUNTER_BITS, snowflake_time_ms

    now = CHATD_EPOCH_MS + 123_456
    first = media.random_snowflake(5, now, 0xABC)
    assert snowflake_time_ms(first) == now
    assert (first >> COUNTER_BITS) & 0x3FF == 5 and first & 0xFFF == 0xABC
    assert media.random_snowflake(5, now, 0x1ABC) == first  # only 12 bits are taken


def test_signed_links() -> None:
    secret = b"k" * 32
    signature = media.link_signature(secret, 1, 2, 1000)
    assert media.link_is_valid(secret, 1, 2, 1000, signature, now_ms=999)
    assert not media.link_is_valid(secret, 1, 2, 1000, signature, now_ms=1000)  # expired
    assert not media.link_is_valid(secret, 1, 3, 1000, signature, now_ms=0)  # another user
    assert not media.link_is_valid(secret, 9, 2, 1000, signature, now_ms=0)  # another media
    assert not media.link_is_valid(secret, 1, 2, 2000, signature, now_ms=0)  # a later expiry
    assert not media.link_is_valid(b"j" * 32, 1, 2, 1000, signature, now_ms=0)
