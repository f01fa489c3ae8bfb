"""The shipped content filter (domain/content_filter.py): URL forms, subdomains, case,
punycode, and the disguises a browser would see through."""

from __future__ import annotations

import pytest

from chatd.config import AbuseConfig
from chatd.domain.content_filter import ALLOW, UrlDomainBlocklist, normalise_domain

BLOCKLIST = UrlDomainBlocklist(domains=["evil.example", "Bücher.Example", "xn--80ak6aa92e.com"])


def check(text: str) -> bool:
    return BLOCKLIST.check(1, 2, "text/plain", text).allowed


@pytest.mark.parametrize("text", [
    "see https://evil.example/x?y=1",
    "http://evil.example",
    "evil.example",
    "go to www.evil.example now",
    "deep.sub.evil.example/path",
    "HTTPS://EVIL.EXAMPLE/",
    "mail me: bob@evil.example",
    "https://good.example@evil.example/login",
    "evil.example.",
    "(evil.example)",
    "\uff45\uff56\uff49\uff4c\uff0e\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45",  # full-width
    "evil。example",  # ideographic full stop
    "https://%65vil.example/",  # percent-escaped
    "https://bücher.example/",
    "https://xn--bcher-kva.example/",
    "https://BÜCHER.EXAMPLE",  # upper case, as typed
    "https://аррӏе.com",  # noqa: RUF001  # Cyrillic, listed in punycode form
    "https://evil.example:8443/x",
])
def test_blocked(text: str) -> None:
    verdict = BLOCKLIST.check(1, 2, "text/plain", text)
    assert not verdict.allowed
    assert "not allowed" in verdict.reason


@pytest.mark.parametrize("text", [
    "nothing here",
    "notevil.example",
    "https://evil.example.org/",
    "evil-example.com",
    "evil.examples",
    "the file is evil.txt",
    "version 1.2.3",
    "https://bucher.example/",
    "",
])
def test_allowed(text: str) -> None:
    assert check(text)


def test_an_empty_list_allows_everything_without_looking() -> None:
    empty = UrlDomainBlocklist(AbuseConfig())
    assert empty.check(1, 2, "text/plain", "https://evil.example/") is ALLOW


def test_the_list_comes_from_the_config() -> None:
    configured = UrlDomainBlocklist(AbuseConfig(blocked_domains=("spam.test",)))
    assert not configured.check(1, 2, "text/plain", "buy at shop.spam.test").allowed
    assert configured.check(1, 2, "text/plain", "https://evil.example/").allowed


def test_domains_are_normalised_alike() -> None:
    assert normalise_domain("BÜCHER.example.") == normalise_domain("xn--bcher-kva.example") \
        == "xn--bcher-kva.example"


# -- attacks (attack13) ------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "https://ev\u00adil.example/",  # a soft hyphen: invisible, and IDNA maps it to nothing
    "evil\u200b.example",  # a zero-width space before the dot
    "e\u200dvil.example",  # a zero-width joiner
    "\u2066evil.example\u2069",  # bidi isolates around it
    "ev%C2%ADil.example",  # a percent-escaped soft hyphen
    "_evil.example_",  # Markdown / chat-app italics: shown (and linked) as evil.example
    "__evil.example__",  # bold
    "see *evil.example*_now",
])
def test_invisible_and_formatting_characters_do_not_hide_a_blocked_name(text: str) -> None:
    assert not check(text)


@pytest.mark.parametrize("text", [
    "a" * 65_536,  # no dot at all: the old pattern backtracked over every start
    "a." * 32_768,  # one dotted name of 32,768 labels: every suffix was joined
    "-" * 65_536,
])
def test_a_long_body_is_checked_in_linear_time(text: str) -> None:
    """The filter runs synchronously on the event loop for every text body of up to
    limits.max_message_bytes (64 KiB): a body crafted to backtrack stalled the whole
    process for about a minute (16 KiB of one letter took 3.7 s)."""
    import time
    started = time.perf_counter()
    assert check(text)
    assert time.perf_counter() - started < 0.5
