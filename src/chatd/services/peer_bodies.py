"""The fields of a request body a peer sent (`home.*`, `media.*`, …), checked.

A peer is an authenticated shard, so a body that does not fit is a bug or a version
skew, not an attack; it is still refused field by field (400 `malformed_command` to the
peer) rather than trusted, so no handler ever sees a value of the wrong type.
"""

from __future__ import annotations

from typing import Any

from chatd.errors import BadRequest


def _malformed(message: str) -> BadRequest:
    return BadRequest(message, code="malformed_command")


def int_field(body: dict[str, Any], name: str, *, minimum: int | None = None) -> int:
    value = body.get(name)
    if not isinstance(value, int) or isinstance(value, bool) \
            or (minimum is not None and value < minimum):
        raise _malformed(f"{name}: expected an integer"
                         + (f" of at least {minimum}" if minimum is not None else ""))
    return value


def ids_field(body: dict[str, Any], name: str) -> list[int]:
    value = body.get(name)
    if not isinstance(value, list) or not all(
            isinstance(item, int) and not isinstance(item, bool) for item in value):
        raise _malformed(f"{name}: expected a list of ids")
    return value


def text_field(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise _malformed(f"{name}: expected a string")
    return value


def optional_field(body: dict[str, Any], name: str, kind: type) -> Any:
    value = body.get(name)
    if value is not None and not isinstance(value, kind):
        raise _malformed(f"{name}: expected {kind.__name__} or nothing")
    return value
