"""The client's address of a REST request, behind trusted proxies (domain/addresses.py)."""

from __future__ import annotations

import socket

from quart import Request

from chatd.domain.addresses import TrustedProxies


def client_address(request: Request, proxies: TrustedProxies) -> str:
    """The TCP peer, or, when it is a trusted proxy, whom X-Forwarded-For says it served."""
    forwarded = request.headers.getlist("X-Forwarded-For") if proxies else []
    return proxies.client_address(request.remote_addr, forwarded)


def socket_peer(sock: socket.socket) -> str | None:
    """The host of a socket's TCP peer; None for other sockets (a TLS bridge's pair) or
    one already gone."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        host: str = sock.getpeername()[0]
    except OSError:
        return None
    return host
