"""The request models agree with the JSON Schema they publish, and with domain/rules.py.

- Each request model parses exactly the JSON objects its schema admits: the published
  schema is checked by an independent validator (jsonschema_rs, the one Schemathesis
  uses) against `Model.parse` on generated objects.
- What a schema admits, the domain rules accept (so a schema-valid request is never
  refused for its form); where a schema is exact, the reverse holds too.
- Response models render what the WebSocket frames carry for the same objects.
"""

from __future__ import annotations

import base64
import binascii
import re
import string
from typing import Any

import jsonschema_rs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatd.domain import rules
from chatd.domain.ids import MAX_ID, parse_id
from chatd.domain.models import Message, User
from chatd.errors import BadRequest
from chatd.protocol import frames
from chatd.web import models, render
from chatd.web.schema import (
    Id,
    IdList,
    Integer,
    Kind,
    Limits,
    ListOf,
    Model,
    String,
    compile_pattern,
)

LIMITS = Limits(min_password_length=8, history_page_max=200)
REQUEST_MODELS = [models.Register, models.Login, models.ProfileChange, models.OpenDirect,
                  models.MarkRead, models.CreateGroup, models.RenameGroup, models.UserIds,
                  models.SendMessage, models.LinkRequest, models.Quarantine]
NAMES = {models.DISPLAY_NAME: (rules.MAX_DISPLAY_NAME, False),
         models.GROUP_NAME: (rules.MAX_GROUP_NAME, False),
         models.STATUS: (rules.MAX_STATUS_TEXT, True),
         models.DEVICE_NAME: (rules.MAX_DEVICE_NAME, False)}
#: Text that exercises the name rules: spaces of every kind, controls, format characters,
#: joiners, emoji, combining marks, line separators.
TRICKY = "a Zé \t\n\r\x1c\x85\xa0\u3000\u2028\u200b\u200d\u202e\ufeff\u0301\U0001f468\ufe0f\x00\x7f"
tricky_text = st.text(st.one_of(st.sampled_from(TRICKY), st.characters(codec="utf-8")),
                      max_size=12)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63),
                         st.floats(allow_nan=False, allow_infinity=False), st.just(2.0),
                         st.text(max_size=8))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=6)


def validator(model: type[Model]) -> Any:
    schemas = {"Id": models.ID.definition(), model.__name__: model.schema(LIMITS),
               "AttachmentRef": models.AttachmentRef.schema(LIMITS)}
    return jsonschema_rs.validator_for({"components": {"schemas": schemas},
                                        "$ref": f"#/components/schemas/{model.__name__}"})


def near_valid(kind: Kind) -> st.SearchStrategy[Any]:
    """Values near a kind's boundary: some valid, some just not."""
    if isinstance(kind, Id):
        return st.from_regex(r"[0-9]{1,20}", fullmatch=True) | st.sampled_from(
            ["0", str(MAX_ID), str(MAX_ID + 1), "0" * 18 + "1", "0" * 19 + "1", "12\n", "-1"])
    if isinstance(kind, IdList):
        return st.lists(near_valid(kind.id), max_size=3)
    if isinstance(kind, ListOf):
        return st.lists(st.one_of(objects(kind.model), json_values), max_size=3) | st.lists(
            st.just({"media_id": "1"}), min_size=kind.max_items, max_size=kind.max_items + 1)
    if isinstance(kind, Integer):
        return st.one_of(st.integers(-3, 3), st.sampled_from([2.0, -1.0, 1.5, 2**64]))
    if isinstance(kind, String) and kind.pattern is not None:
        return st.from_regex(kind.pattern) | tricky_text
    if isinstance(kind, String):
        return st.one_of(st.text(max_size=10), st.text(min_size=1020, max_size=1030),
                         st.binary(max_size=6).map(lambda data: base64.b64encode(data).decode()))
    return json_scalars


def objects(model: type[Model]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with every field near valid (so that some are valid), or anything."""
    near = {field.name: near_valid(field.kind) for field in model.fields()}
    anything = {field.name: st.one_of(near_valid(field.kind), json_values)
                for field in model.fields()}
    required = [field.name for field in model.fields() if field.required]
    return st.one_of(
        st.fixed_dictionaries({name: near[name] for name in required}, optional={
            **{name: value for name, value in near.items() if name not in required},
            "extra": json_values}),
        st.fixed_dictionaries({}, optional={**anything, "extra": json_values}))


@pytest.mark.parametrize("model", REQUEST_MODELS, ids=lambda model: model.__name__)
def test_request_models_parse_exactly_what_their_schema_admits(model: type[Model]) -> None:
    schema = validator(model)

    @settings(max_examples=300, database=None, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(objects(model))
    def agree(body: dict[str, Any]) -> None:
        try:
            model.parse(body, LIMITS)
            parsed = True
        except BadRequest:
            parsed = False
        assert parsed == schema.is_valid(body), body

    agree()


def _id_accepted(text: str) -> bool:
    try:
        parse_id(text, "id")
    except BadRequest:
        return False
    return True


@given(st.text(alphabet=string.digits + "x \n-", max_size=21) | st.sampled_from([
    "0", "0" * 19, "1", "0" * 18 + "1", "0" * 19 + "1", str(MAX_ID), str(MAX_ID + 1),
    str(10**18 - 1), str(10**18), "9" * 19, "9" * 18, "09223372036854775807"]))
def test_the_id_pattern_is_the_rule_for_ids(text: str) -> None:
    in_pattern = bool(compile_pattern(models.ID.pattern).search(text))
    assert in_pattern == _id_accepted(text), text


@pytest.mark.parametrize("kind", list(NAMES), ids=lambda kind: kind.format)
def test_every_name_the_rules_accept_is_in_the_schema(kind: String) -> None:
    """The name patterns state necessary conditions: a name the rules accept matches.
    Every BMP character is tried alone, inside a name and at its ends."""
    max_length, blank = NAMES[kind]
    pattern = compile_pattern(kind.pattern or "")

    def accepted(text: str) -> bool:
        if text == "" and kind is models.DEVICE_NAME:
            return True  # "" means 'unnamed device'
        try:
            rules.clean_text(text, "name", max_length=max_length, allow_empty=blank)
        except BadRequest:
            return False
        return True

    for point in range(0x10000):
        if 0xD800 <= point <= 0xDFFF:
            continue
        char = chr(point)
        for text in (char, f"a{char}b", f" {char}", f"{char} ", f"a{char}"):
            if accepted(text):
                assert pattern.search(text), (kind.format, hex(point), text)

    @settings(max_examples=500, database=None, deadline=None)
    @given(tricky_text)
    def necessary(text: str) -> None:
        if accepted(text):
            assert pattern.search(text), text

    necessary()


@given(st.from_regex(models.HANDLE.pattern or "", fullmatch=True))
def test_every_handle_the_schema_admits_is_valid(handle: str) -> None:
    rules.normalize_handle(handle)


@given(st.text(alphabet=string.ascii_letters + string.digits + "+_.-@ ", max_size=34))
def test_the_handle_pattern_is_the_rule_for_handles_as_written(handle: str) -> None:
    """Exact for handles with nothing around them; the rule also trims and folds any
    Unicode case (the Kelvin sign), which the schema does not admit."""
    try:
        rules.normalize_handle(handle)
        valid = handle == handle.strip()
    except BadRequest:
        valid = False
    assert bool(compile_pattern(models.HANDLE.pattern or "").search(handle)) == valid, handle


@given(st.text(alphabet=string.ascii_letters + string.digits + "._:-/ é", max_size=70))
def test_the_client_msg_id_and_content_type_patterns_are_their_rules(text: str) -> None:
    def passes(check: Any, value: str) -> bool:
        try:
            return check(value) == value  # the rule takes it as it is
        except BadRequest:
            return False

    assert passes(rules.check_client_msg_id, text) == bool(
        compile_pattern(models.CLIENT_MSG_ID.pattern or "").search(text))
    in_schema = True
    try:
        models.CONTENT_TYPE.parse(text, "content_type", LIMITS)
    except BadRequest:
        in_schema = False
    assert passes(rules.check_content_type, text) == in_schema, text


@given(st.binary(max_size=20).map(lambda data: base64.b64encode(data).decode())
       | st.text(alphabet="ab+/=", max_size=10))
def test_base64_the_schema_admits_decodes(text: str) -> None:
    """The schema is standard base64 with its padding; Python also decodes quads followed
    by excess '=', which the server no longer takes."""
    in_schema = bool(compile_pattern(models.BASE64.pattern or "").search(text))
    try:
        base64.b64decode(text, validate=True)
        decodes = True
    except (binascii.Error, ValueError):
        decodes = False
    assert in_schema == (decodes and not re.fullmatch(r"(?:[A-Za-z0-9+/]{4})+=+", text)), text


def test_the_password_bounds_are_the_rules() -> None:
    low, high = LIMITS.min_password_length, rules.MAX_PASSWORD_LENGTH
    for length in (low - 1, low, high, high + 1):
        in_schema = low <= length <= high
        try:
            rules.check_password("x" * length, low)
            accepted = True
        except BadRequest:
            accepted = False
        assert accepted == in_schema


def test_responses_are_the_frames_payloads() -> None:
    user = User(7, "alice", "Alice", b"", 1, "here", True, False)
    assert render.public_user(user).to_json() == frames.public_profile(user)
    for body in ("hi", {"event": "renamed", "name": "x", "actor_id": "7"}):
        message = Message(1, 2, 3, 7, 8, "c-1", "text/plain", body, 99)
        assert render.message(message).to_json() == frames.message_payload(message)
    quote = {"sender_id": "7", "content_type": "text/plain", "text": "hi"}
    for rich in (Message(1, 2, 3, 7, 8, "c-1", "text/plain", "re", 99, reply_to=2,
                         quote=quote, mentions=(9, 10), forwarded=6),
                 Message(1, 2, 3, 7, 8, "c-1", "text/plain", "re", 99, reply_to=2,
                         quote={"sender_id": "7", "content_type": "chatd/deleted",
                                "deleted": True}, forwarded=1)):
        assert render.message(rich).to_json() == frames.message_payload(rich)
    binary = Message(1, 2, 3, 7, 8, "c-1", "application/x-olm", b"\x00\xff", 99)
    assert render.message(binary).to_json()["body"] == "AP8="
