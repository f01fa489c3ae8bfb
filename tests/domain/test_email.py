"""The pure parts of email notifications: signed links, addresses, the mails' form."""

from __future__ import annotations

from email import message_from_bytes, policy

import pytest

from chatd.domain import email_links, email_messages
from chatd.domain.email_messages import DigestItem, Envelope
from chatd.domain.email_settings import DigestState, next_due, retry_after_ms, valid_address

SECRET = b"k" * 32
NOW = 1_800_000_000_000


def test_a_link_is_bound_to_its_purpose_user_address_and_time() -> None:
    token = email_links.make(SECRET, "verify", 42, "a@example.com", NOW)
    parsed = email_links.parse(token)
    email_links.check(SECRET, "verify", parsed, "A@Example.com", NOW)  # case of the address
    for purpose, address, secret, now in (
            ("unsubscribe", "a@example.com", SECRET, NOW),
            ("verify", "b@example.com", SECRET, NOW),
            ("verify", "a@example.com", b"x" * 32, NOW),
            ("verify", "a@example.com", SECRET, NOW + (email_links.VERIFY_TTL_S + 1) * 1000)):
        with pytest.raises(email_links.BadToken):
            email_links.check(secret, purpose, parsed, address, now)  # type: ignore[arg-type]
    other_user = email_links.parse(f"43.{token.split('.', 1)[1]}")
    with pytest.raises(email_links.BadToken):
        email_links.check(SECRET, "verify", other_user, "a@example.com", NOW)
    for bad in ("", "1.2", "1.2.3", "a.b.AAAAAAAAAAAAAAAAAAAAAAAA", token + "\n"):
        with pytest.raises(email_links.BadToken):
            email_links.parse(bad)


def test_addresses_are_plain_ascii() -> None:
    assert valid_address("first.last+tag@mail.example.org")
    for bad in ("a@b", "a@example.com\r\nBcc: x@y.z", "a b@example.com", "ü@example.com",
                "<a@example.com>", "a@example.com>", "@example.com", "a@-x.example",
                "a" * 65 + "@example.com"):
        assert not valid_address(bad), bad


def test_one_digest_per_period_and_backoff() -> None:
    assert next_due(DigestState(), NOW, 600) == NOW + 600_000
    # A digest went out a minute ago: the next waits for the period after it.
    recent = DigestState(last_sent_ms=NOW + 300_000)
    assert next_due(recent, NOW, 600) == NOW + 900_000
    assert [retry_after_ms(n) for n in (1, 2, 3)] == [30_000, 60_000, 120_000]
    assert retry_after_ms(50) == 3_600_000


def test_the_digest_escapes_user_strings_and_keeps_them_out_of_headers() -> None:
    envelope = Envelope("chatd <notify@example.org>", "to@example.com", "https://x.example")
    items = [DigestItem("<b>Team</b>\r\nBcc: e@evil.example", True, 3,
                        "line1\nline2 <script>", "Eve & \"co\"")]
    message = email_messages.digest(envelope, items, unsubscribe_url="https://x.example/u?t=1",
                                    now_ms=NOW)
    parsed = message_from_bytes(message.as_bytes(), policy=policy.default)
    assert parsed.get_all("Bcc") is None and parsed["Subject"] == email_messages.DIGEST_SUBJECT
    html = parsed.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "&lt;b&gt;Team&lt;/b&gt; Bcc: e@evil.example" in html
    assert "Eve &amp; &quot;co&quot;: line1 line2 &lt;script&gt;" in html
    text = parsed.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "- <b>Team</b> Bcc: e@evil.example (group): 3 unread" in text
    assert "    Eve & \"co\": line1 line2 <script>" in text
    assert parsed["List-Unsubscribe"] == "<https://x.example/u?t=1>"
    # A real link (longer than a folded line) stays a bare <URL>: not RFC 2047-encoded.
    url = "https://chat.example.org/email/unsubscribe?token=" + "1" * 18 + ".1830630617." + "A" * 24
    long = email_messages.digest(envelope, items, unsubscribe_url=url, now_ms=NOW).as_bytes()
    assert f"\nList-Unsubscribe: <{url}>\n".encode() in long.replace(b"\r\n", b"\n")


def test_long_previews_are_cut() -> None:
    assert email_messages.flatten("x" * 500, 140) == "x" * 139 + "…"
    assert email_messages.flatten(" a\u2028b\x00c ", 10) == "a b c"
