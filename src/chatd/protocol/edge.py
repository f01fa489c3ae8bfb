"""Decoding client input at the edge: JSON and msgpack with limits, text as Unicode.

Everything a client sends (a REST body, a WebSocket frame) is decoded here before any
field is looked at, so the rules hold for every route and frame by construction:

- **Nesting** deeper than `MAX_DEPTH` is refused. Frames and bodies are flat maps with at
  most a list or map inside; a deep document would only cost recursion (Python's JSON
  decoder raises `RecursionError` past ~1,000 levels, which is not a `ValueError`).
- **Text** must be Unicode scalar values. JSON's `\\ud800` escapes decode to lone
  surrogates, which Python strings can hold but UTF-8 cannot encode: accepted, such a
  string fails later wherever it is encoded (a reply echoing it, a group-commit batch
  storing it), far from the request that brought it. msgpack strings are UTF-8 decoded
  strictly, so they cannot carry one.
- **Map keys** in msgpack must be strings (an array key would make an unhashable dict key).

Failures raise `InputError` with a stable code and a message naming the field.
"""

from __future__ import annotations

import json
from typing import Any

import msgpack

#: The deepest nesting of lists and maps accepted (a frame or body is depth 1 or 2).
MAX_DEPTH = 16


class InputError(ValueError):
    """Input that cannot be decoded or breaks an edge rule; `code` is client-facing."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def loads_json(data: str | bytes) -> Any:
    """Parse JSON text (bytes must be UTF-8) under the edge rules."""
    if isinstance(data, bytes | bytearray):
        try:
            data = bytes(data).decode()
        except UnicodeDecodeError as exc:
            raise InputError("malformed_json", f"the body is not UTF-8: {exc}") from None
    try:
        value = json.loads(data)
    except RecursionError:
        raise _too_deep() from None
    except ValueError as exc:
        raise InputError("malformed_json", f"not valid JSON: {exc}") from None
    # Cheap scans of the raw text decide whether the decoded value needs walking: no
    # `\u` escape means no surrogate, and few brackets mean shallow.
    may_hold_surrogates = "\\u" in data
    if may_hold_surrogates or data.count("[") + data.count("{") > MAX_DEPTH:
        _walk(value, "", 0, strings=may_hold_surrogates)
    return value


def unpack_msgpack(data: bytes) -> Any:
    """Unpack one msgpack value under the edge rules."""
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (msgpack.StackError, RecursionError):
        raise _too_deep() from None
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError) as exc:
        raise InputError("malformed_frame",
                         f"not valid msgpack: {exc or type(exc).__name__}") from None
    if isinstance(value, dict | list):
        _walk(value, "", 0, strings=False)
    return value


def check_text(value: str, field: str) -> str:
    """`value` if every character is a Unicode scalar value (no lone surrogate)."""
    if not value.isascii() and not _encodable(value):
        # The field's name is echoed only if it is itself encodable (a key may not be).
        shown = field[:64] if field and _encodable(field) else "a field"
        raise InputError("invalid_text", f"{shown}: text must be valid Unicode "
                         "(a lone surrogate such as \\ud800 is not)")
    return value


def _too_deep() -> InputError:
    return InputError("nesting_too_deep", f"lists and maps nest at most {MAX_DEPTH} deep")


def _walk(value: Any, path: str, depth: int, *, strings: bool) -> None:
    """Refuse nesting past `MAX_DEPTH` and, with `strings`, text that is not Unicode."""
    if isinstance(value, dict):
        if depth >= MAX_DEPTH:
            raise _too_deep()
        for key, item in value.items():
            name = f"{path}.{key}" if path else str(key)
            if strings and isinstance(key, str):
                check_text(key, path)
            _walk(item, name, depth + 1, strings=strings)
    elif isinstance(value, list):
        if depth >= MAX_DEPTH:
            raise _too_deep()
        for index, item in enumerate(value):
            _walk(item, f"{path}[{index}]", depth + 1, strings=strings)
    elif strings and isinstance(value, str):
        check_text(value, path)


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True
