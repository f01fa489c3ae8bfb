"""Bearer authentication: user tokens for REST and /ws, the admin token for /metrics.

Routes do not call these: a route declares its access (web/api.py) and is handed the
`Session`.
"""

from __future__ import annotations

import hmac

from quart import Request
from werkzeug.datastructures import Headers

from chatd.domain.models import Session
from chatd.errors import Unauthorized
from chatd.services.users import Users


def bearer_token(headers: Headers) -> str | None:
    return parse_bearer(headers.get("Authorization", ""))


def parse_bearer(header: str) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value, if it is one."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def authenticate(request: Request, users: Users) -> Session:
    token = bearer_token(request.headers)
    if token is None:
        raise Unauthorized("send 'Authorization: Bearer <token>' (from POST /login)",
                           code="missing_token")
    return await users.authenticate(token)


def require_admin(request: Request, admin_token: str) -> None:
    """The request carries the admin token (`server.admin_token`, which must be set)."""
    token = bearer_token(request.headers) or ""
    # Constant time: the admin token is a long-lived secret.
    if not admin_token or not hmac.compare_digest(token.encode(), admin_token.encode()):
        raise Unauthorized("this route needs the admin token", code="invalid_token")
