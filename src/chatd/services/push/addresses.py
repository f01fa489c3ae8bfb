"""Where a push may go: the server-side request forgery guard (docs/notifications.md).

An endpoint or gateway URL is a request the server makes for a user, so it must not
reach what only the server can reach: its own loopback, the LAN, link-local metadata
services. The URL's host is resolved with Trio's getaddrinfo at subscribe time and
again before every send (a name's records can change after the check); every address it
resolves to must be public, and the send then connects to the checked address itself
(the host name still goes in `Host` and TLS's SNI and certificate check), so a second
resolution inside the HTTP client cannot be pointed elsewhere (DNS rebinding).

`push.allow_private_endpoints` lifts both rules (and allows http): for a LAN push
gateway, or a test's fake push service on loopback.
"""

from __future__ import annotations

import ipaddress
import socket

import trio

from chatd.domain.push import IPAddress, Target, literal_address, parse_target, refused_address
from chatd.errors import BadRequest

#: Seconds a resolution may take before the URL is refused (subscribe) or the send fails
#: as a network error (retried).
RESOLVE_TIMEOUT = 5.0


class Resolver:
    def __init__(self, *, allow_private: bool, timeout: float = RESOLVE_TIMEOUT) -> None:
        self.allow_private = allow_private
        self._timeout = timeout

    def parse(self, url: str, field: str = "endpoint") -> Target:
        return parse_target(url, allow_private=self.allow_private, field=field)

    async def check(self, url: str, field: str = "endpoint") -> Target:
        """Refuse (400 endpoint_refused) a URL of the wrong form or whose host resolves
        to an address a push may not go to."""
        target = self.parse(url, field)
        try:
            await self.address_of(target)
        except ResolveFailed as exc:
            raise BadRequest(f"{field}: {exc}", code="endpoint_refused") from None
        return target

    async def address_of(self, target: Target) -> IPAddress:
        """The address to connect to for `target`: its first, once every address its
        host resolves to has passed. Raises `ResolveFailed`."""
        literal = literal_address(target.host)
        if literal is not None:
            addresses = [literal]
        else:
            with trio.move_on_after(self._timeout) as scope:
                try:
                    infos = await trio.socket.getaddrinfo(target.host, target.port,
                                                          type=socket.SOCK_STREAM)
                except OSError as exc:
                    raise ResolveFailed(f"{target.host} does not resolve ({exc})") from None
                except UnicodeError:  # the name's labels are not valid IDNA
                    raise AddressRefused(f"{target.host} is not a valid host name") from None
            if scope.cancelled_caught:
                raise ResolveFailed(f"{target.host} did not resolve in time")
            addresses = []
            for info in infos:
                # The scope id of a link-local IPv6 address ("fe80::1%eth0") goes.
                text = str(info[4][0]).split("%", 1)[0]
                addresses.append(ipaddress.ip_address(text))
            if not addresses:
                raise ResolveFailed(f"{target.host} has no address")
        if not self.allow_private:
            for address in addresses:
                reason = refused_address(address)
                if reason:
                    raise AddressRefused(f"{target.host} resolves to {address}, {reason}: "
                                        "a push may go only to a public address")
        return addresses[0]


class ResolveFailed(Exception):
    """The host did not resolve (in time), or (`AddressRefused`) resolved to an address a
    push may not go to."""


class AddressRefused(ResolveFailed):
    """It resolved, to an address a push may not go to: not retried."""
