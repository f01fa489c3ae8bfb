"""Bearer authentication for REST routes."""

from __future__ import annotations

from quart import Request
from werkzeug.datastructures import Headers

from chatd.domain.models import Session
from chatd.errors import Unauthorized
from chatd.services.accounts import AccountService


def bearer_token(headers: Headers) -> str | None:
    return parse_bearer(headers.get("Authorization", ""))


def parse_bearer(header: str) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value, if it is one."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def authenticate(request: Request, accounts: AccountService) -> Session:
    token = bearer_token(request.headers)
    if token is None:
        raise Unauthorized("send 'Authorization: Bearer <token>' (from POST /login)",
                           code="missing_token")
    return accounts.authenticate(token)
