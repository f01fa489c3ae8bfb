"""The gateway's JSON forms, without etcd: the edges real answers rarely reach."""

from __future__ import annotations

import base64

import pytest

from chatd.coordination import Compare, EtcdError, KeyValue, Op, wire


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


@pytest.mark.parametrize(("prefix", "key", "end"), [
    ("a/", b"a/", b"a0"),
    ("a\xff", b"a\xc3\xbf", b"a\xc3\xc0"),  # UTF-8 of U+00FF ends in 0xbf, not 0xff
    ("x\udcff", b"x\xff", b"y"),  # a raw 0xff byte: carried to the byte before
    ("\udcff\udcff", b"\xff\xff", b"\0"),  # nothing to increment: to the end
    ("", b"\0", b"\0"),  # every key
])
def test_prefix_range(prefix: str, key: bytes, end: bytes) -> None:
    selected = wire.prefix_range(prefix)
    assert unb64(selected["key"]) == key
    assert unb64(selected["range_end"]) == end


def test_zero_fields_are_absent_in_answers() -> None:
    kv = wire.parse_kv({"key": "aw==", "mod_revision": "7"})
    assert kv == KeyValue(key="k", value=b"", create_revision=0, mod_revision=7, version=0,
                          lease=0)
    events = wire.parse_watch_events({"events": [
        {"kv": {"key": "aw==", "value": "dg==", "mod_revision": "8"}},
        {"type": "DELETE", "kv": {"key": "aw==", "mod_revision": "9"}}]})
    assert [(e.kind, e.kv.value, e.revision) for e in events] == [
        ("put", b"v", 8), ("delete", b"", 9)]
    assert wire.parse_range({"header": {"revision": "3"}}).kvs == []


@pytest.mark.parametrize("answer", [
    {"key": "not base64!"},
    {"key": 5},
    {"key": "aw==", "version": "many"},
    {"key": "aw==", "version": 1.5},
    {"key": "aw==", "lease": True},
    ["not", "an", "object"],
])
def test_malformed_answers_are_etcd_errors(answer: object) -> None:
    with pytest.raises(EtcdError, match="etcd sent"):
        wire.parse_kv(answer)


def test_errors_of_unary_and_streaming_answers() -> None:
    unary = wire.error_of({"error": "etcdserver: requested lease not found",
                           "message": "etcdserver: requested lease not found", "code": 5})
    assert unary is not None and unary.code == 5 and "lease not found" in str(unary)
    streamed = wire.error_of({"error": {"grpc_code": 14, "http_code": 503,
                                        "message": "transport is closing"}})
    assert streamed is not None and streamed.code == 14
    assert wire.error_of({"result": {}}) is None
    assert wire.error_of({"error": "odd", "code": "x"}) is not None


def test_compares_always_name_their_operand() -> None:
    # A compare with version 0 must still carry the field: the gateway needs it to
    # know which member of the target union the compare is about.
    assert Compare.version("k", "=", 0).to_json() == {
        "key": "aw==", "result": "EQUAL", "target": "VERSION", "version": "0"}
    assert Compare.create_revision("k", "<", 5).to_json()["create_revision"] == "5"
    assert Compare.mod_revision("k", ">", 5).to_json()["result"] == "GREATER"
    assert Compare.value("k", "!=", b"v").to_json() == {
        "key": "aw==", "result": "NOT_EQUAL", "target": "VALUE", "value": "dg=="}


def test_txn_answers_are_matched_to_their_ops() -> None:
    ops = [Op.get("k"), Op.put("k", b"v", lease=9), Op.delete("k")]
    assert Op.put("k", b"v", lease=9).to_json() == {
        "request_put": {"key": "aw==", "value": "dg==", "lease": "9"}}
    answer = {"header": {"revision": "4"}, "succeeded": True, "responses": [
        {"response_range": {"header": {"revision": "3"}}},
        {"response_put": {"header": {"revision": "4"}}},
        {"response_delete_range": {"header": {"revision": "4"}, "deleted": "1"}}]}
    result = wire.parse_txn(answer, ops, [])
    assert result.succeeded and result.revision == 4
    assert result.responses == [None, 4, 1]
    failed = wire.parse_txn({"header": {"revision": "4"}}, ops, [])
    assert not failed.succeeded and failed.responses == []
    with pytest.raises(EtcdError, match="2 ops with 1 responses"):
        wire.parse_txn({"succeeded": True, "responses": [{}]}, ops[:2], [])
