from __future__ import annotations

import pytest

from chatd.domain import rules
from chatd.errors import BadRequest


@pytest.mark.parametrize("raw, expected", [
    ("Alice", "alice"), (" bob_1.x ", "bob_1.x"), ("+14155550123", "+14155550123"),
    ("abc", "abc"), ("a" * 32, "a" * 32),
])
def test_handles_normalise(raw: str, expected: str) -> None:
    assert rules.normalize_handle(raw) == expected


@pytest.mark.parametrize("raw", ["ab", "a" * 33, "al ice", "alice!", "+123", "+0123456789",
                                 "", "ålice"])
def test_bad_handles(raw: str) -> None:
    with pytest.raises(BadRequest):
        rules.normalize_handle(raw)


def test_clean_text() -> None:
    assert rules.clean_text("  Cafe\u0301 ", "n", max_length=10) == "Café"
    with pytest.raises(BadRequest):
        rules.clean_text("   ", "n", max_length=10)
    with pytest.raises(BadRequest):
        rules.clean_text("a\nb", "n", max_length=10)
    with pytest.raises(BadRequest):
        rules.clean_text("x" * 11, "n", max_length=10)
    assert rules.clean_text("", "n", max_length=10, allow_empty=True) == ""


def test_content_types() -> None:
    assert rules.check_content_type("Text/Plain") == "text/plain"
    assert rules.check_content_type("application/vnd.chatd.olm+json")
    for bad in ("text", "/plain", "text/", "a/b/c", "chatd/system", "x" * 70 + "/y"):
        with pytest.raises(BadRequest):
            rules.check_content_type(bad)
    assert rules.is_text_content("text/markdown")
    assert not rules.is_text_content("image/png")
