"""The pure rules of push notifications (domain/push.py): where a push may go, and what
it says."""

from __future__ import annotations

import base64
import ipaddress

import pytest

from chatd.domain import push
from chatd.errors import BadRequest
from chatd.services.push.sender import retry_after


@pytest.mark.parametrize(("address", "reason"), [
    ("127.0.0.1", "loopback"), ("127.9.9.9", "loopback"), ("::1", "loopback"),
    ("10.0.0.1", "private"), ("172.16.5.4", "private"), ("192.168.1.1", "private"),
    ("fc00::1", "private"), ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"), ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"), ("240.0.0.1", "private"), ("100.64.0.1", "not a public"),
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:10.0.0.1", "private"),
    ("64:ff9b::a9fe:a9fe", "link-local"), ("2002:7f00:1::", "loopback"),
    ("fec0::1", "site-local"),  # deprecated (RFC 3879), outside is_private
])
def test_refused_addresses(address: str, reason: str) -> None:
    refused = push.refused_address(ipaddress.ip_address(address))
    assert refused is not None and refused.startswith(reason), refused


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1::1", "8.8.8.8",
                                     "::ffff:8.8.8.8", "64:ff9b::808:808"])
def test_public_addresses_pass(address: str) -> None:
    assert push.refused_address(ipaddress.ip_address(address)) is None


def test_target_form() -> None:
    target = push.parse_target("https://push.example.org/wpush/v2/abc?x=1",
                               allow_private=False)
    assert (target.host, target.port, target.origin) == (
        "push.example.org", 443, "https://push.example.org")
    assert push.parse_target("https://[2001:db8::1]:8443/p", allow_private=False).origin \
        == "https://[2001:db8::1]:8443"
    for url in ("http://push.example.org/x", "ftp://push.example.org/x", "https:///x",
                "https://user:pw@push.example.org/x", "https://push.example.org:99999/x",
                "https://push.example.org/x#frag", "push.example.org/x", ""):
        with pytest.raises(BadRequest) as refused:
            push.parse_target(url, allow_private=False)
        assert refused.value.code == "endpoint_refused"
    # Private endpoints allowed: http too (a LAN gateway, a test's fake).
    assert push.parse_target("http://127.0.0.1:8000/p", allow_private=True).origin \
        == "http://127.0.0.1:8000"


def test_topic_urgency_and_payload() -> None:
    key = b"k" * 16
    topic = push.topic(2**63 - 1, key)
    assert len(topic) <= 32 and len(base64.urlsafe_b64decode(topic[1:] + "==")) == 16
    assert push.topic(1, key) != push.topic(2, key)
    assert push.topic(1, key) == push.topic(1, key) != push.topic(1, b"other key")
    assert push.urgency("direct") == "high" and push.urgency("group") == "normal"
    assert push.payload(conversation_id=5, seq=2, unread=1, sender_name=None,
                        preview=None) == {"conversation_id": "5", "seq": 2, "unread": 1}
    assert push.preview_of("text/plain", " a\n\tb ", 10) == "a b"
    assert push.preview_of("text/plain", "x" * 20, 10) == "x" * 9 + "…"
    assert push.preview_of("image/png", "x", 10) is None
    assert push.preview_of("text/plain", b"bytes", 10) is None


def test_retry_after() -> None:
    assert retry_after("120") == 120.0
    assert retry_after(None) is None and retry_after("soon") is None
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
