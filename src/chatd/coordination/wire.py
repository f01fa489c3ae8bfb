"""etcd v3's JSON gateway forms, sans I/O: request bodies out, typed values in.

Checked against etcd 3.4.23's gateway (`/v3/...`), not only its docs:

- keys and values travel as base64; int64 fields come back as JSON strings and are sent
  as strings here (lease ids do not fit a double);
- proto3 leaves out fields at their zero value: a missing `value` is b"", a missing
  `count`, `version` or `lease` is 0, a missing `succeeded` is false, a watch event
  without `type` is a PUT, a keepalive without `TTL` means the lease is gone;
- a compare against a missing key: etcd compares its version, create and mod revisions
  as 0, but a VALUE compare on a missing key is always false, whatever the operator. So
  "the key is absent" is `Compare.version(key, "=", 0)`, never a value compare;
- errors are `{"error", "message", "code"}` with the gRPC code (16: bad auth token);
  on a streaming call (watch, keepalive) an error arrives as an object in the stream.

Keys are `str` in the API and UTF-8 on the wire; bytes that are not UTF-8 round-trip
through surrogate escapes, so a key written by another client is never refused.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from chatd.coordination.errors import EtcdError

#: The gRPC code etcd answers a missing, expired or unknown auth token with.
UNAUTHENTICATED = 16
#: The gRPC code of "etcd cannot serve this now" (no leader, shutting down).
UNAVAILABLE = 14

CompareOp = Literal["=", "!=", "<", ">"]
_RESULTS: dict[str, str] = {"=": "EQUAL", "!=": "NOT_EQUAL", "<": "LESS", ">": "GREATER"}


def encode_key(key: str) -> str:
    return b64(key.encode("utf-8", "surrogateescape"))


def decode_key(text: str) -> str:
    return unb64(text).decode("utf-8", "surrogateescape")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise EtcdError(f"etcd sent bytes that are not base64: {error}") from None


def prefix_range(prefix: str) -> dict[str, str]:
    """The `key`/`range_end` pair that selects every key starting with `prefix`.

    range_end is the prefix with its last byte below 0xff incremented (bytes after it
    dropped); a prefix of only 0xff bytes, or the empty prefix, has no such end, and
    etcd's "\\0" end means "to the end of the keyspace".
    """
    raw = prefix.encode("utf-8", "surrogateescape")
    for index in range(len(raw) - 1, -1, -1):
        if raw[index] < 0xFF:
            end = raw[:index] + bytes([raw[index] + 1])
            return {"key": b64(raw), "range_end": b64(end)}
    return {"key": b64(raw or b"\0"), "range_end": b64(b"\0")}


# -- answers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyValue:
    """One key as etcd holds it. `lease` is 0 when the key has none."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass(frozen=True)
class WatchEvent:
    """A change under a watched prefix. For a delete, `kv` has only the key and
    `mod_revision` (the deletion's revision); its value is b""."""

    kind: Literal["put", "delete"]
    kv: KeyValue
    revision: int


@dataclass(frozen=True)
class RangeResult:
    kvs: list[KeyValue]
    revision: int


@dataclass(frozen=True)
class TxnResult:
    """What a txn did. `responses` holds one entry per op of the branch that ran, in
    order: the `KeyValue | None` an `Op.get` read, the revision of an `Op.put`, the count
    of keys an `Op.delete` removed."""

    succeeded: bool
    revision: int
    responses: list[KeyValue | int | None] = field(default_factory=list)


def integer(value: object, what: str) -> int:
    """An int64 field: a string on the wire, absent (so 0) at its zero value."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise EtcdError(f"etcd sent {what} as {type(value).__name__}, not an integer")
    try:
        return int(value)
    except ValueError:
        raise EtcdError(f"etcd sent {what} {value!r}, not an integer") from None


def parse_kv(raw: object) -> KeyValue:
    body = mapping(raw, "a key-value")
    return KeyValue(
        key=decode_key(text(body.get("key", ""), "key")),
        value=unb64(text(body.get("value", ""), "value")),
        create_revision=integer(body.get("create_revision"), "create_revision"),
        mod_revision=integer(body.get("mod_revision"), "mod_revision"),
        version=integer(body.get("version"), "version"),
        lease=integer(body.get("lease"), "lease"),
    )


def header_revision(body: Mapping[str, Any]) -> int:
    return integer(mapping(body.get("header", {}), "header").get("revision"), "revision")


def parse_range(body: Mapping[str, Any]) -> RangeResult:
    return RangeResult([parse_kv(kv) for kv in sequence(body.get("kvs", []), "kvs")],
                       header_revision(body))


def parse_watch_events(result: Mapping[str, Any]) -> list[WatchEvent]:
    events = []
    for raw in sequence(result.get("events", []), "events"):
        event = mapping(raw, "a watch event")
        kind = event.get("type", "PUT")
        if kind not in ("PUT", "DELETE"):
            raise EtcdError(f"etcd sent a watch event of unknown type {kind!r}")
        kv = parse_kv(event.get("kv", {}))
        events.append(WatchEvent("put" if kind == "PUT" else "delete", kv, kv.mod_revision))
    return events


def error_of(body: Mapping[str, Any]) -> EtcdError | None:
    """The refusal in an answer, or None. Unary calls put it at the top
    (`{"error": "...", "code": 5}`), streams as `{"error": {"message", "grpc_code"}}`."""
    if "error" not in body:
        return None
    error = body["error"]
    if isinstance(error, Mapping):
        message = error.get("message", "")
        code = error.get("grpc_code", error.get("code", 0))
    else:
        message, code = body.get("message", error), body.get("code", 0)
    code = code if isinstance(code, int) and not isinstance(code, bool) else 0
    return EtcdError(f"etcd refused the request: {message}", code=code)


def mapping(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise EtcdError(f"etcd sent {what} that is not a JSON object")
    return value


def sequence(value: object, what: str) -> Sequence[Any]:
    if not isinstance(value, list):
        raise EtcdError(f"etcd sent {what} that is not a JSON array")
    return value


def text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise EtcdError(f"etcd sent a {what} that is not a string")
    return value


# -- txn -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Compare:
    """One condition of a txn; build it with the class methods."""

    key: str
    op: CompareOp
    target: Literal["VALUE", "VERSION", "CREATE", "MOD"]
    operand: bytes | int

    def __post_init__(self) -> None:
        if self.op not in _RESULTS:
            raise ValueError(f"compare op must be one of {sorted(_RESULTS)}, not {self.op!r}")

    @classmethod
    def value(cls, key: str, op: CompareOp, value: bytes) -> Compare:
        """The key's value against `value`. Always false when the key is missing."""
        return cls(key, op, "VALUE", value)

    @classmethod
    def version(cls, key: str, op: CompareOp, version: int) -> Compare:
        """The key's version (writes since it was created); 0 when it is missing."""
        return cls(key, op, "VERSION", version)

    @classmethod
    def create_revision(cls, key: str, op: CompareOp, revision: int) -> Compare:
        """The revision that created the key; 0 when it is missing."""
        return cls(key, op, "CREATE", revision)

    @classmethod
    def mod_revision(cls, key: str, op: CompareOp, revision: int) -> Compare:
        """The revision of the key's last write; 0 when it is missing."""
        return cls(key, op, "MOD", revision)

    def to_json(self) -> dict[str, str]:
        body = {"key": encode_key(self.key), "result": _RESULTS[self.op], "target": self.target}
        if self.target == "VALUE":
            assert isinstance(self.operand, bytes)
            body["value"] = b64(self.operand)
        else:
            assert isinstance(self.operand, int)
            field_name = {"VERSION": "version", "CREATE": "create_revision",
                          "MOD": "mod_revision"}[self.target]
            # Sent even at 0: the gateway needs the field to know which union member
            # the compare is against.
            body[field_name] = str(self.operand)
        return body


@dataclass(frozen=True)
class Op:
    """One operation of a txn branch; build it with the class methods."""

    kind: Literal["put", "delete", "get"]
    key: str
    value: bytes = b""
    lease: int | None = None

    @classmethod
    def put(cls, key: str, value: bytes, lease: int | None = None) -> Op:
        return cls("put", key, value, lease)

    @classmethod
    def delete(cls, key: str) -> Op:
        return cls("delete", key)

    @classmethod
    def get(cls, key: str) -> Op:
        return cls("get", key)

    def to_json(self) -> dict[str, dict[str, str]]:
        key = encode_key(self.key)
        if self.kind == "put":
            return {"request_put": put_body(self.key, self.value, self.lease)}
        if self.kind == "delete":
            return {"request_delete_range": {"key": key}}
        return {"request_range": {"key": key}}


def put_body(key: str, value: bytes, lease: int | None) -> dict[str, str]:
    body = {"key": encode_key(key), "value": b64(value)}
    if lease is not None:
        body["lease"] = str(lease)
    return body


def txn_body(compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op],
             ) -> dict[str, list[Any]]:
    return {"compare": [c.to_json() for c in compare],
            "success": [op.to_json() for op in success],
            "failure": [op.to_json() for op in failure]}


def parse_txn(body: Mapping[str, Any], success: Sequence[Op], failure: Sequence[Op],
              ) -> TxnResult:
    succeeded = body.get("succeeded", False) is True
    ops = success if succeeded else failure
    raw = sequence(body.get("responses", []), "txn responses")
    if len(raw) != len(ops):
        raise EtcdError(f"etcd answered a txn branch of {len(ops)} ops with "
                        f"{len(raw)} responses")
    responses: list[KeyValue | int | None] = []
    for op, answer in zip(ops, raw, strict=True):
        item = mapping(answer, "a txn response")
        if op.kind == "get":
            kvs = parse_range(mapping(item.get("response_range", {}), "a range")).kvs
            responses.append(kvs[0] if kvs else None)
        elif op.kind == "put":
            responses.append(header_revision(mapping(item.get("response_put", {}), "a put")))
        else:
            deleted = mapping(item.get("response_delete_range", {}), "a delete")
            responses.append(integer(deleted.get("deleted"), "deleted"))
    return TxnResult(succeeded, header_revision(body), responses)
