"""Bearer authentication for REST routes."""

from __future__ import annotations

from quart import Request

from chatd.domain.models import Session
from chatd.errors import Unauthorized
from chatd.services.accounts import AccountService


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def authenticate(request: Request, accounts: AccountService) -> Session:
    token = bearer_token(request)
    if token is None:
        raise Unauthorized("send 'Authorization: Bearer <token>' (from POST /login)",
                           code="missing_token")
    return accounts.authenticate(token)
