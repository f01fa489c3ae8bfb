"""Reading request input: JSON bodies, typed fields, query parameters, path ids."""

from __future__ import annotations

import base64
import binascii
from typing import Any, TypeVar

from quart import Request

from chatd.domain.ids import parse_id
from chatd.errors import BadRequest
from chatd.protocol import edge

MAX_IDS_PER_REQUEST = 1024
T = TypeVar("T")


async def json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, decoded under the edge rules (`protocol/edge.py`:
    bounded nesting, text that is valid Unicode). The Content-Type is not insisted on, so
    that `curl -d '{...}'` works as typed."""
    data = await request.get_data(as_text=False)
    if not data:
        raise BadRequest("the request needs a JSON object body", code="malformed_json")
    try:
        value = edge.loads_json(data)
    except edge.InputError as exc:
        raise BadRequest(exc.message, code=exc.code) from None
    if not isinstance(value, dict):
        raise BadRequest("the body must be a JSON object", code="malformed_json")
    return value


def _field_error(key: str, expected: str, value: Any) -> BadRequest:
    got = "null" if value is None else type(value).__name__
    return BadRequest(f"{key}: expected {expected}, got {got}", code="invalid_field")


def text(body: dict[str, Any], key: str) -> str:
    if key not in body:
        raise BadRequest(f"{key}: this field is required", code="missing_field")
    value = body[key]
    if not isinstance(value, str):
        raise _field_error(key, "a string", value)
    return value


def _optional(body: dict[str, Any], key: str, kind: type[T], expected: str) -> T | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, kind):
        raise _field_error(key, expected, value)
    return value


def optional_text(body: dict[str, Any], key: str) -> str | None:
    return _optional(body, key, str, "a string")


def optional_bool(body: dict[str, Any], key: str) -> bool | None:
    return _optional(body, key, bool, "true or false")


def integer(body: dict[str, Any], key: str) -> int:
    if key not in body:
        raise BadRequest(f"{key}: this field is required", code="missing_field")
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise _field_error(key, "an integer", value)
    return value


def identifier(body: dict[str, Any], key: str) -> int:
    if key not in body:
        raise BadRequest(f"{key}: this field is required", code="missing_field")
    return parse_id(body[key], key)


def identifiers(body: dict[str, Any], key: str, *, allow_empty: bool = False) -> list[int]:
    if key not in body:
        raise BadRequest(f"{key}: this field is required", code="missing_field")
    value = body[key]
    if not isinstance(value, list):
        raise _field_error(key, "a list of ids", value)
    if not value and not allow_empty:
        raise BadRequest(f"{key}: must name at least one id", code="invalid_field")
    if len(value) > MAX_IDS_PER_REQUEST:
        raise BadRequest(f"{key}: at most {MAX_IDS_PER_REQUEST} ids", code="invalid_field")
    return [parse_id(item, f"{key}[{index}]") for index, item in enumerate(value)]


def path_id(raw: str, name: str) -> int:
    return parse_id(raw, name)


def query_int(request: Request, key: str) -> int | None:
    raw = request.args.get(key)
    if raw is None or raw == "":
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19:
        raise BadRequest(f"{key}: expected a non-negative whole number", code="invalid_field")
    return int(raw)


def message_body(body: dict[str, Any], content_type: str, *, is_text: bool) -> str | bytes:
    """`body` is a string: the text itself for text/* types, base64 of the bytes otherwise."""
    raw = text(body, "body")
    if is_text:
        return raw
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"body: {content_type} bodies must be base64",
                         code="invalid_field") from None
