"""Client addresses: who a request came from, behind trusted reverse proxies (pure).

The TCP peer is the client, unless the peer is a trusted proxy (`server.trusted_proxies`):
then X-Forwarded-For is read from the right (each proxy appends the address it saw), and
the first entry that is not itself a trusted proxy is the client. Entries further left
were written by the client or proxies nobody vouches for, so they are never believed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: IPv6 clients are limited per /64: one host is commonly given a whole /64, so keying
#: by the full address would let it rotate through 2**64 keys.
_IPV6_PREFIX = 64


def parse_ip(text: str) -> IPAddress | None:
    """An address as it appears in a socket name or an X-Forwarded-For entry ("1.2.3.4",
    "1.2.3.4:567", "::1", "[::1]:567", with a zone or not); None if it is not one."""
    text = text.strip()
    if text.startswith("["):  # [v6]:port
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    text = text.partition("%")[0]  # a v6 zone
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack socket's view of an IPv4 client
    return address


class TrustedProxies:
    def __init__(self, entries: Iterable[str]) -> None:
        """`entries`: addresses or CIDR blocks (checked by config.validate)."""
        self._networks: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(entry.strip(), strict=False) for entry in entries)

    def __bool__(self) -> bool:
        return bool(self._networks)

    def trusts(self, address: IPAddress | None) -> bool:
        return address is not None and any(address in network for network in self._networks)

    def client_address(self, peer: str | None, forwarded_for: Iterable[str] = ()) -> str:
        """The client's address as text. `peer`: the TCP peer's host; `forwarded_for`: the
        X-Forwarded-For header values in the order received (several headers count as
        one list). A malformed entry ends the walk: the nearest trusted hop is taken."""
        hop = parse_ip(peer or "")
        if hop is None:
            return peer or "unknown"  # not IP (a Unix socket): nothing to walk
        if not self.trusts(hop):
            return str(hop)
        entries = [entry for value in forwarded_for for entry in value.split(",")]
        for entry in reversed(entries):
            address = parse_ip(entry)
            if address is None:
                break  # garbage a trusted proxy passed on: believe no further
            hop = address
            if not self.trusts(hop):
                break
        return str(hop)


def rate_key(address: str) -> str:
    """The key an address is rate limited under: itself, or its /64 for IPv6."""
    parsed = parse_ip(address)
    if isinstance(parsed, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((parsed, _IPV6_PREFIX), strict=False))
    return address if parsed is None else str(parsed)
