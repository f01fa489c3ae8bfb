"""Typed JSON models: one declaration gives both the parser of an input and its JSON Schema.

A model is a frozen dataclass whose fields name their JSON kind:

    @dataclass(frozen=True, slots=True)
    class Rename(Model):
        name: Annotated[str, GROUP_NAME]
        topic: Annotated[str | None, TOPIC] = None   # optional: it has a default
        archived: bool = False                       # plain str, int, bool, models and
                                                     # lists of models need no kind

`Rename.parse(decoded_json, limits)` checks a request body against exactly the
constraints that `Rename.schema(limits)` publishes in /openapi.json, and nothing else: the
route's service may refuse more (a name that normalises to nothing, an unknown user), but
it never has to accept less. `to_json()` renders a response model with the same field
names the schema lists. That is why the published contract and the server cannot drift.

Patterns are written once, in the JSON Schema dialect (ECMA-262, searched, anchored with
`^…$`), and compiled for Python with the one difference that matters here: `$` becomes
`\\Z`, since Python's `$` also matches before a final newline. They use only `\\uXXXX`
escapes and character classes, which both dialects read the same way.

Config-dependent bounds (the minimum password length, the largest history page) are
`Limit`s, resolved from the `Limits` of the running server, so the document a server
publishes states its own settings.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import keyword
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from chatd.errors import BadRequest

Schema = dict[str, Any]


class Limit(enum.Enum):
    """A bound taken from the server's configuration."""

    MIN_PASSWORD_LENGTH = "min_password_length"
    HISTORY_PAGE_MAX = "history_page_max"
    MAX_LINK_TTL = "max_link_ttl"


@dataclass(frozen=True, slots=True)
class Limits:
    """The configured values of every `Limit`."""

    min_password_length: int = 8
    history_page_max: int = 200
    max_link_ttl: int = 604_800

    def resolve(self, bound: int | Limit | None) -> int | None:
        if isinstance(bound, Limit):
            value: int = getattr(self, bound.value)
            return value
        return bound


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """A JSON Schema pattern as a Python regex with the same meaning (see the module doc)."""
    return re.compile(pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern)


def _type_error(name: str, expected: str, value: object) -> BadRequest:
    got = "null" if value is None else type(value).__name__
    return BadRequest(f"{name}: expected {expected}, got {got}", code="invalid_field")


class Kind:
    """One JSON value type: how it is checked when it comes in, how it is written when it
    goes out, and its JSON Schema. Kinds are immutable and shared between models."""

    __slots__ = ()

    def parse(self, value: object, name: str, limits: Limits) -> Any:
        """A decoded JSON value as the Python value the handler gets, or `BadRequest`."""
        raise TypeError(f"{type(self).__name__} describes output only")

    def parse_text(self, raw: str, name: str, limits: Limits) -> Any:
        """The same for a path segment or a query parameter, which arrive as text."""
        return self.parse(raw, name, limits)

    def dump(self, value: Any) -> Any:
        """The Python value as JSON (only kinds whose JSON differs override it)."""
        return value

    #: Whether `dump` is the identity, so rendering can skip the call.
    plain: ClassVar[bool] = True

    def schema(self, limits: Limits) -> Schema:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class String(Kind):
    """A JSON string. `rule` is the message for a string that does not match `pattern`;
    constraint failures answer `code` (the length and pattern rules are client errors of
    the value, `bad_request`, unless a route has always said otherwise)."""

    pattern: str | None = None
    min_length: int | Limit | None = None
    max_length: int | Limit | None = None
    rule: str = "does not have the required form"
    #: Values the pattern admits that are refused anyway (`not: {enum: …}`).
    reserved: tuple[str, ...] = ()
    reserved_rule: str = "is reserved"
    #: A name for rules JSON Schema cannot state (see docs/api.md); tools treat it as a note.
    format: str | None = None
    description: str = ""
    code: str = "bad_request"

    def parse(self, value: object, name: str, limits: Limits) -> str:
        if not isinstance(value, str):
            raise _type_error(name, "a string", value)
        low, high = limits.resolve(self.min_length), limits.resolve(self.max_length)
        if low is not None and len(value) < low:
            raise BadRequest(f"{name}: must be at least {low} characters", code=self.code)
        if high is not None and len(value) > high:
            raise BadRequest(f"{name}: must be at most {high} characters", code=self.code)
        if self.pattern is not None and not _compiled(self.pattern).search(value):
            raise BadRequest(f"{name}: {self.rule}", code=self.code)
        if value in self.reserved:
            raise BadRequest(f"{name}: {value} {self.reserved_rule}", code=self.code)
        return value

    def schema(self, limits: Limits) -> Schema:
        schema: Schema = {"type": "string"}
        low, high = limits.resolve(self.min_length), limits.resolve(self.max_length)
        if low is not None:
            schema["minLength"] = low
        if high is not None:
            schema["maxLength"] = high
        if self.pattern is not None:
            schema["pattern"] = self.pattern
        if self.reserved:
            schema["not"] = {"enum": list(self.reserved)}
        if self.format is not None:
            schema["format"] = self.format
        return _described(schema, self.description)


@dataclass(frozen=True, slots=True)
class Integer(Kind):
    """A JSON integer: not a boolean, but 2.0 is one (as in JSON Schema). As text (path,
    query) only plain decimal digits are read, so the bounds must be ≥ 0."""

    minimum: int | Limit | None = None
    maximum: int | Limit | None = None
    description: str = ""
    code: str = "invalid_field"
    #: When given, the only values admitted (JSON Schema `enum`).
    choices: tuple[int, ...] = ()

    def parse(self, value: object, name: str, limits: Limits) -> int:
        # JSON Schema counts 2.0 as an integer, and so does the server.
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(name, "an integer", value)
        if self.choices and value not in self.choices:
            raise BadRequest(f"{name}: must be one of {', '.join(map(str, self.choices))}",
                             code=self.code)
        low, high = limits.resolve(self.minimum), limits.resolve(self.maximum)
        if (low is not None and value < low) or (high is not None and value > high):
            if low is not None and high is not None:
                rule = f"must be within {low}..{high}"
            elif low is not None:
                rule = "must not be negative" if low == 0 else f"must be at least {low}"
            else:
                rule = f"must be at most {high}"
            raise BadRequest(f"{name}: {rule}", code=self.code)
        return value

    def parse_text(self, raw: str, name: str, limits: Limits) -> int:
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 19:
            raise BadRequest(f"{name}: expected a non-negative whole number",
                             code="invalid_field")
        return self.parse(int(raw), name, limits)

    def schema(self, limits: Limits) -> Schema:
        schema: Schema = {"type": "integer"}
        if self.choices:
            schema["enum"] = list(self.choices)
        low, high = limits.resolve(self.minimum), limits.resolve(self.maximum)
        if low is not None:
            schema["minimum"] = low
        if high is not None:
            schema["maximum"] = high
        return _described(schema, self.description)


@dataclass(frozen=True, slots=True)
class Boolean(Kind):
    description: str = ""
    #: When set, the one value admitted (JSON Schema `const`): a confirmation.
    only: bool | None = None

    def parse(self, value: object, name: str, limits: Limits) -> bool:
        if not isinstance(value, bool):
            raise _type_error(name, "true or false", value)
        if self.only is not None and value is not self.only:
            raise BadRequest(f"{name}: must be {str(self.only).lower()}",
                             code="invalid_field")
        return value

    def schema(self, limits: Limits) -> Schema:
        schema: Schema = {"type": "boolean"}
        if self.only is not None:
            schema["const"] = self.only
        return _described(schema, self.description)


@dataclass(frozen=True, slots=True)
class Id(Kind):
    """A 64-bit id, written as a decimal string (JavaScript numbers stop at 2**53): 1 to
    19 digits whose value is 1..`maximum`. The published pattern states the range too,
    digit by digit, so a schema-valid id is always one the server reads."""

    maximum: int
    description: str = "64-bit id as a decimal string"

    plain: ClassVar[bool] = False

    def parse(self, value: object, name: str, limits: Limits) -> int:
        if not isinstance(value, str) or not _DIGITS.fullmatch(value):
            raise BadRequest(f"{name} must be an id (a decimal string of up to 19 digits)")
        if not _compiled(self.pattern).search(value):
            raise BadRequest(f"{name} is out of range for an id")
        return int(value)

    def dump(self, value: Any) -> str:
        return str(value)

    @property
    def pattern(self) -> str:
        return _id_pattern(self.maximum)

    def schema(self, limits: Limits) -> Schema:
        # Every id field refers to one definition: the pattern is long.
        return {"$ref": "#/components/schemas/Id"}

    def definition(self) -> Schema:
        """The schema `schema()` refers to, for the document's components."""
        return {"type": "string", "pattern": self.pattern,
                "description": f"{self.description}: 1..{self.maximum}"}


_DIGITS = re.compile(r"[0-9]{1,19}")


@functools.cache
def _id_pattern(maximum: int) -> str:
    """A regex for the decimal strings of 1 to 19 characters (leading zeros allowed, as
    the server reads them) whose value is 1..maximum, for a 19-digit `maximum`. After k
    leading zeros, up to 19 - k digits with a non-zero first one: fewer than 19 are always
    in range; 19 (k = 0) must compare at most `maximum`, digit by digit. The length is in
    the regex itself, so generators need not filter on maxLength."""
    digits = str(maximum)
    assert len(digits) == 19, "the pattern is built for 19-digit maxima"
    branches = []
    for zeros in range(19):  # up to 18 significant digits: any value
        tail = 17 - max(zeros - 1, 0)
        branches.append("0" * zeros + "[1-9]" + (f"[0-9]{{0,{tail}}}" if tail else ""))
    for index, digit in enumerate(digits):  # 19 digits, at most `maximum`
        low = 1 if index == 0 else 0
        if int(digit) > low:
            below = str(low) if int(digit) - 1 == low else f"{low}-{int(digit) - 1}"
            rest = 18 - index
            branches.append(digits[:index] + f"[{below}]" + (f"[0-9]{{{rest}}}" if rest else ""))
    branches.append(digits)
    return "^(?:" + "|".join(branches) + ")$"


@dataclass(frozen=True, slots=True)
class IdList(Kind):
    id: Id
    min_items: int
    max_items: int

    plain: ClassVar[bool] = False

    def parse(self, value: object, name: str, limits: Limits) -> list[int]:
        if not isinstance(value, list):
            raise _type_error(name, "a list of ids", value)
        if len(value) < self.min_items:
            raise BadRequest(f"{name}: must name at least {self.min_items} id",
                             code="invalid_field")
        if len(value) > self.max_items:
            raise BadRequest(f"{name}: at most {self.max_items} ids", code="invalid_field")
        return [self.id.parse(item, f"{name}[{index}]", limits)
                for index, item in enumerate(value)]

    def dump(self, value: Any) -> list[str]:
        return [] if value is None else [str(item) for item in value]

    def schema(self, limits: Limits) -> Schema:
        schema: Schema = {"type": "array", "items": self.id.schema(limits),
                          "maxItems": self.max_items}
        if self.min_items:
            schema["minItems"] = self.min_items
        return schema


@dataclass(frozen=True, slots=True)
class Choice(Kind):
    """One of a few strings (output)."""

    values: tuple[str, ...]

    def schema(self, limits: Limits) -> Schema:
        return {"type": "string", "enum": list(self.values)}


@dataclass(frozen=True, slots=True)
class Json(Kind):
    """A value with a schema of its own that no model describes (output)."""

    json_schema: Mapping[str, Any]

    def schema(self, limits: Limits) -> Schema:
        return dict(self.json_schema)


@dataclass(frozen=True, slots=True)
class Nested(Kind):
    """A model inside a model (output; input too)."""

    model: type[Model]

    plain: ClassVar[bool] = False

    def parse(self, value: object, name: str, limits: Limits) -> Any:
        if not isinstance(value, dict):
            raise _type_error(name, "an object", value)
        return self.model.parse(value, limits)

    def dump(self, value: Any) -> dict[str, Any] | None:
        if value is None:  # a nullable field left out (its model's to_json drops it)
            return None
        model: Model = value
        return model.to_json()

    def schema(self, limits: Limits) -> Schema:
        return {"$ref": f"#/components/schemas/{self.model.__name__}"}


@dataclass(frozen=True, slots=True)
class ListOf(Kind):
    """A list of models (output; input too, with `max_items`)."""

    model: type[Model]
    #: For input: the most items taken (0: output only, no bound published).
    max_items: int = 0

    plain: ClassVar[bool] = False

    def parse(self, value: object, name: str, limits: Limits) -> list[Any]:
        if not isinstance(value, list):
            raise _type_error(name, "a list of objects", value)
        if self.max_items and len(value) > self.max_items:
            raise BadRequest(f"{name}: at most {self.max_items} items", code="invalid_field")
        parsed = []
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                raise _type_error(f"{name}[{index}]", "an object", item)
            parsed.append(self.model.parse(item, limits))
        return parsed

    def dump(self, value: Any) -> list[dict[str, Any]]:
        return [] if value is None else [item.to_json() for item in value]

    def schema(self, limits: Limits) -> Schema:
        schema: Schema = {"type": "array",
                          "items": {"$ref": f"#/components/schemas/{self.model.__name__}"}}
        if self.max_items:
            schema["maxItems"] = self.max_items
        return schema


@dataclass(frozen=True, slots=True)
class Either:
    """A rule across fields: at least one of `alternatives` holds, each a field and a
    narrower kind it must then satisfy, e.g. "the content type is text/*, or the body is
    base64". Published as `anyOf`; each branch states its field in full (not only the
    narrowing) so that a generator can produce a branch without filtering."""

    field: str
    rule: str
    alternatives: tuple[tuple[str, Kind], ...]
    code: str = "invalid_field"

    def check(self, data: Mapping[str, object], limits: Limits) -> None:
        for name, kind in self.alternatives:
            try:
                kind.parse(data.get(name), name, limits)
            except BadRequest:
                continue
            return
        raise BadRequest(f"{self.field}: {self.rule}", code=self.code)

    def schema(self, limits: Limits) -> Schema:
        return {"anyOf": [{"required": [name], "properties": {name: kind.schema(limits)}}
                          for name, kind in self.alternatives]}


@functools.cache
def _compiled(pattern: str) -> re.Pattern[str]:
    return compile_pattern(pattern)


def _described(schema: Schema, description: str) -> Schema:
    if description:
        schema["description"] = description
    return schema


def _nullable(schema: Schema) -> Schema:
    if isinstance(schema.get("type"), str):
        return {**schema, "type": [schema["type"], "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    kind: Kind
    required: bool
    #: `None` in JSON means "left out" (the field's type admits None).
    nullable: bool
    default: Any
    #: The dataclass attribute: the JSON name, or it with a trailing "_" when the name is
    #: a Python keyword ("for" is held as `for_`).
    attribute: str = ""


_INFERRED: dict[type, Kind] = {str: String(), int: Integer(), bool: Boolean()}


def _kind_of(hint: Any) -> tuple[Kind, bool]:
    """The kind a field's annotation names, and whether it admits None."""
    kind = None
    if typing.get_origin(hint) is typing.Annotated:
        hint, *extras = typing.get_args(hint)
        kind = next((extra for extra in extras if isinstance(extra, Kind)), None)
    nullable = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        members = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        nullable = len(members) < len(typing.get_args(hint))
        hint = members[0] if len(members) == 1 else hint
    if kind is None:
        if isinstance(hint, type) and issubclass(hint, Model):
            kind = Nested(hint)
        elif typing.get_origin(hint) is list and _is_model(typing.get_args(hint)[0]):
            kind = ListOf(typing.get_args(hint)[0])
        elif hint in _INFERRED:
            kind = _INFERRED[hint]
        else:
            raise TypeError(f"no JSON kind for {hint!r}: annotate it with a Kind")
    return kind, nullable


def _is_model(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, Model)


#: Per model class, computed on first use (a class is complete only once defined).
_FIELDS: dict[type[Model], tuple[Field, ...]] = {}
_DUMPERS: dict[type[Model], tuple[tuple[str, Kind | None, str], ...]] = {}


def _fields(model: type[Model]) -> tuple[Field, ...]:
    known = _FIELDS.get(model)
    if known is not None:
        return known
    hints = typing.get_type_hints(model, include_extras=True)
    result = []
    for spec in dataclasses.fields(model):  # type: ignore[arg-type]
        kind, nullable = _kind_of(hints[spec.name])
        has_default = spec.default is not dataclasses.MISSING
        name = spec.name[:-1] if spec.name.endswith("_") and keyword.iskeyword(
            spec.name[:-1]) else spec.name
        result.append(Field(name, kind, not has_default, nullable,
                            spec.default if has_default else None, spec.name))
    _FIELDS[model] = fields = tuple(result)
    return fields


def _dumpers(model: type[Model]) -> tuple[tuple[str, Kind | None, str], ...]:
    known = _DUMPERS.get(model)
    if known is None:
        known = _DUMPERS[model] = tuple((field.name, None if field.kind.plain else field.kind,
                                         field.attribute) for field in _fields(model))
    return known


class Model:
    """Base of request and response models (frozen dataclasses; see the module doc)."""

    __slots__ = ()

    #: Refuse fields the model does not name (`additionalProperties: false`); otherwise
    #: they are ignored, as a JSON API usually does.
    closed: ClassVar[bool] = False
    #: Rules across fields, checked once every field is valid.
    constraints: ClassVar[tuple[Either, ...]] = ()
    #: What the schema says about the whole object.
    description: ClassVar[str] = ""

    @classmethod
    def fields(cls) -> tuple[Field, ...]:
        return _fields(cls)

    @classmethod
    def parse(cls, data: Mapping[str, object], limits: Limits) -> Self:
        """A JSON object (decoded) as this model, or `BadRequest` naming the first field
        that breaks the schema."""
        fields = cls.fields()
        if cls.closed:
            known = {field.name for field in fields}
            unknown = sorted(key for key in data if key not in known)
            if unknown:
                raise BadRequest(f"{unknown[0]}: not a field here; this request takes "
                                 f"{', '.join(sorted(known))}", code="invalid_field")
        values = {}
        for field in fields:
            if field.name not in data:
                if field.required:
                    raise BadRequest(f"{field.name}: this field is required",
                                     code="missing_field")
                values[field.attribute] = field.default
                continue
            value = data[field.name]
            if value is None and field.nullable:
                values[field.attribute] = field.default
            else:
                values[field.attribute] = field.kind.parse(value, field.name, limits)
        for constraint in cls.constraints:
            constraint.check(data, limits)
        return cls(**values)

    @classmethod
    def parse_query(cls, args: Mapping[str, str], limits: Limits) -> Self:
        """Query parameters as this model: every field is text in the URL."""
        values = {}
        for field in cls.fields():
            raw = args.get(field.name)
            if raw is None:
                if field.required:
                    raise BadRequest(f"{field.name}: give ?{field.name}= (required)",
                                     code="missing_field")
                values[field.attribute] = field.default
            else:
                values[field.attribute] = field.kind.parse_text(raw, field.name, limits)
        return cls(**values)

    @classmethod
    def schema(cls, limits: Limits) -> Schema:
        properties = {}
        for field in cls.fields():
            schema = field.kind.schema(limits)
            properties[field.name] = _nullable(schema) if field.nullable else schema
        schema = {"type": "object",
                  "required": [field.name for field in cls.fields() if field.required],
                  "properties": properties}
        if cls.closed:
            schema["additionalProperties"] = False
        if cls.constraints:
            schema["allOf"] = [constraint.schema(limits) for constraint in cls.constraints]
        return _described(schema, cls.description)

    @classmethod
    def parameters(cls, limits: Limits) -> list[Schema]:
        """This model as OpenAPI query parameters."""
        return [{"name": field.name, "in": "query", "required": field.required,
                 "schema": field.kind.schema(limits)} for field in cls.fields()]

    def to_json(self) -> dict[str, Any]:
        # None is JSON null whatever the kind (an optional id is not the string "None").
        return {name: value if kind is None or value is None else kind.dump(value)
                for name, kind, attribute in _dumpers(type(self))
                for value in (getattr(self, attribute),)}

