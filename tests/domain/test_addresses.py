from __future__ import annotations

import pytest

from chatd.domain.addresses import TrustedProxies, parse_ip, rate_key


@pytest.mark.parametrize(("text", "parsed"), [
    ("192.0.2.1", "192.0.2.1"), (" 192.0.2.1 ", "192.0.2.1"), ("192.0.2.1:4711", "192.0.2.1"),
    ("2001:db8::1", "2001:db8::1"), ("[2001:db8::1]:4711", "2001:db8::1"),
    ("fe80::1%eth0", "fe80::1"), ("::ffff:192.0.2.1", "192.0.2.1"),
    ("", None), ("unknown", None), ("300.1.1.1", None), ("1.2.3.4.5", None), ("::::", None),
    ("[2001:db8::1", "2001:db8::1"), ("_hidden", None), ("192.0.2.1:x:y", None),
])
def test_parse_ip(text: str, parsed: str | None) -> None:
    address = parse_ip(text)
    assert (None if address is None else str(address)) == parsed


def test_an_untrusted_peer_is_the_client_whatever_it_forwards() -> None:
    proxies = TrustedProxies(["10.0.0.0/8"])
    assert proxies.client_address("192.0.2.7", ["198.51.100.1"]) == "192.0.2.7"
    assert TrustedProxies([]).client_address("10.0.0.1", ["198.51.100.1"]) == "10.0.0.1"
    assert not TrustedProxies([])


@pytest.mark.parametrize(("forwarded", "client"), [
    ([], "10.0.0.1"),  # a trusted peer that forwards nothing is the client itself
    (["198.51.100.1"], "198.51.100.1"),
    (["203.0.113.5, 198.51.100.1"], "198.51.100.1"),  # the client's own entry is not believed
    (["198.51.100.1, 10.0.0.2, 10.0.0.3"], "198.51.100.1"),  # walked past trusted proxies
    (["203.0.113.5", "198.51.100.1"], "198.51.100.1"),  # several headers are one list
    (["10.0.0.2, 10.0.0.3"], "10.0.0.2"),  # all trusted: the farthest of them
    (["198.51.100.1, garbage"], "10.0.0.1"),  # garbage: the nearest trusted hop
    (["198.51.100.1, garbage, 10.0.0.2"], "10.0.0.2"),
    ([", ,"], "10.0.0.1"),
    (["[2001:db8::5]:443"], "2001:db8::5"),
])
def test_behind_trusted_proxies(forwarded: list[str], client: str) -> None:
    proxies = TrustedProxies(["10.0.0.0/8", "::1"])
    assert proxies.client_address("10.0.0.1", forwarded) == client


def test_peers_that_are_not_ip() -> None:
    proxies = TrustedProxies(["10.0.0.0/8"])
    assert proxies.client_address(None, ["198.51.100.1"]) == "unknown"
    assert proxies.client_address("::1", ["198.51.100.1"]) == "::1"
    assert TrustedProxies(["::1"]).client_address("::1", ["198.51.100.1"]) == "198.51.100.1"


def test_rate_keys() -> None:
    assert rate_key("192.0.2.1") == "192.0.2.1"
    assert rate_key("2001:db8:1:2:3:4:5:6") == rate_key("2001:db8:1:2::9") == "2001:db8:1:2::/64"
    assert rate_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert rate_key("unknown") == "unknown"
