"""Property-based fuzzing of the live stream (GET /ws) against one running shard.

Hostile input must not stop, stall or poison a shard. Cases are generated up front with
Hypothesis: one batch from a fixed seed (the same every run) and one from a random seed
that is printed (`CHATD_FUZZ_SEED=<n>` replays it), plus a fixed list of known-nasty
inputs. They are then replayed, in order, over raw sockets against one server while a
bystander pair (two other users in a direct chat) keeps chatting through `chatd.client`.

Cases cover both subprotocols (chatd.json text frames, chatd.msgpack binary frames), every
client frame type with valid and wrong-typed fields, deep nesting, lone surrogates, huge
ints, msgpack maps with array/map keys, fragmented messages (many continuation frames,
control frames between fragments), ping floods, mutated frame bytes and framing
violations.

For every case, after its bytes a sentinel `{"type": "ping", "req": ...}` is sent, and:

- a frame carrying a `req` is answered by a frame carrying that `req` (or an `error`);
- a message the server cannot use at all (not JSON/msgpack, not a map, a bad `req`, an
  unknown type, a send without `req`, the wrong opcode, too large) gets an `error` frame
  before the sentinel's answer;
- a WebSocket ping gets a pong;
- the server may close the connection instead, but only with a close frame whose code is
  one of 1002, 1007, 1008, 1009, 1011 — never by dropping TCP, never by going silent;
  a framing violation (as judged by chatd's own sans-I/O reader) must be closed that way;
- the server logs no traceback.

At the end GET /healthz answers, and the bystander never missed a round trip.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import itertools
import json
import os
import random
import re
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgpack
import trio
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from chatd.client import ChatClient, LiveConnection
from chatd.config import ServerConfig, WebSocketConfig
from chatd.server import RunningServer
from tests.helpers import PASSWORD, error_log, fresh_handle, new_account

FIXED_SEED = 7_2026
#: Generated cases per seed (two seeds: the fixed one and a random one).
EXAMPLES_PER_SEED = int(os.environ.get("CHATD_FUZZ_EXAMPLES", "900"))
#: Close codes a server may use when it hangs up on a hostile client.
ALLOWED_CLOSE = frozenset({1002, 1007, 1008, 1009, 1011})
#: Seconds one case may take before the server counts as stalled.
CASE_TIMEOUT = 5.0
#: After this many stalled cases the run stops (each one costs CASE_TIMEOUT).
MAX_STALLS = 3
#: Seconds all the cases may take; past that the run stops and fails.
TOTAL_TIMEOUT = 120.0

MAX_MESSAGE = ServerConfig().max_request_bytes
MAX_FRAME = WebSocketConfig().max_frame_bytes
FRAME_TYPES = ("send", "ack", "read", "typing", "ping", "sync")
FIELDS: dict[str, tuple[str, ...]] = {
    "send": ("conversation_id", "client_msg_id", "content_type", "body"),
    "ack": ("conversation_id", "seq"),
    "read": ("conversation_id", "seq"),
    "typing": ("conversation_id",),
    "ping": (),
    "sync": ("cursors",),
}

# -- a value model that can say what json/msgpack libraries cannot -----------------------


@dataclass(frozen=True)
class Map:
    """A map as ordered pairs: keys of any type (arrays, maps), duplicates allowed."""

    pairs: tuple[tuple[Any, Any], ...]


@dataclass(frozen=True)
class Deep:
    """`depth` nested arrays or maps around a 0."""

    kind: str
    depth: int


@dataclass(frozen=True)
class Literal:
    """Raw JSON text (huge numbers, NaN); a string in msgpack."""

    text: str


@dataclass(frozen=True)
class RawPack:
    """Raw msgpack bytes (ext types, timestamps, reserved bytes); null in JSON."""

    data: bytes


@dataclass(frozen=True)
class UniqueReq:
    """A valid `req`, made unique per case when the case is built."""

    prefix: str


def to_json(value: Any, ascii_only: bool = True) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return json.dumps(value)  # NaN, Infinity: Python's json reads them back
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=ascii_only)  # lone surrogates → "\ud800"
    if isinstance(value, bytes):
        return json.dumps(base64.b64encode(value).decode())
    if isinstance(value, list | tuple):
        return "[" + ",".join(to_json(item, ascii_only) for item in value) + "]"
    if isinstance(value, Map):
        return "{" + ",".join(
            json.dumps(key if isinstance(key, str) else to_json(key, ascii_only),
                       ensure_ascii=ascii_only) + ":" + to_json(item, ascii_only)
            for key, item in value.pairs) + "}"
    if isinstance(value, Deep):
        if value.kind == "array":
            return "[" * value.depth + "0" + "]" * value.depth
        return '{"k":' * value.depth + "0" + "}" * value.depth
    if isinstance(value, Literal):
        return value.text
    if isinstance(value, msgpack.ExtType | RawPack):
        return "null"
    raise TypeError(value)


def _msgpack_str(text: str) -> bytes:
    raw = text.encode("utf-8", "surrogatepass")  # lone surrogates: invalid UTF-8
    length = len(raw)
    if length < 32:
        return bytes([0xA0 | length]) + raw
    if length < 256:
        return bytes([0xD9, length]) + raw
    if length < 65_536:
        return struct.pack("!BH", 0xDA, length) + raw
    return struct.pack("!BI", 0xDB, length) + raw


_packer = msgpack.Packer(use_bin_type=True)


def to_msgpack(value: Any) -> bytes:
    if isinstance(value, bool) or value is None or isinstance(value, float | bytes):
        return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]
    if isinstance(value, int):
        return msgpack.packb(max(-(2**63), min(value, 2**64 - 1)))  # type: ignore[no-any-return]
    if isinstance(value, str):
        return _msgpack_str(value)
    if isinstance(value, list | tuple):
        return _packer.pack_array_header(len(value)) + b"".join(to_msgpack(v) for v in value)
    if isinstance(value, Map):
        return _packer.pack_map_header(len(value.pairs)) + b"".join(
            to_msgpack(key) + to_msgpack(item) for key, item in value.pairs)
    if isinstance(value, Deep):
        head = b"\x91" if value.kind == "array" else b"\x81\xa1k"
        return head * value.depth + b"\x00"
    if isinstance(value, Literal):
        return _msgpack_str(value.text)
    if isinstance(value, msgpack.ExtType):
        return msgpack.packb(value)  # type: ignore[no-any-return]
    if isinstance(value, RawPack):
        return value.data
    raise TypeError(value)


def short(value: Any, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} chars)"


# -- RFC 6455, independently of chatd's own implementation --------------------------------


class ws:  # a namespace: the opcodes and the parts this test needs
    OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
    OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
    GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


VALID_CLOSE_CODES = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012,
                               1013, 1014, *range(3000, 5000)))


class Violation(Exception):
    """The peer broke RFC 6455 (or the message size limit): the connection must close."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


class FrameParser:
    """A strict RFC 6455 frame parser: `feed` returns whole messages as (opcode, payload),
    text as str, a close as (code, reason). Used as the oracle for what the server must
    refuse (masked=True: frames from a client) and to read the server's frames
    (masked=False). A size violation is judged from the header alone (a server must not
    wait for a body it refuses); any other violation once its frame is complete."""

    def __init__(self, *, masked: bool, max_message: int) -> None:
        self.masked = masked
        self.max_message = max_message
        self.buffer = bytearray()
        self.fragments: list[bytes] | None = None
        self.fragment_opcode = 0
        self.closed = False

    @property
    def in_message(self) -> bool:
        return self.fragments is not None

    def feed(self, data: bytes) -> list[tuple[int, object]]:
        self.buffer += data
        messages: list[tuple[int, object]] = []
        while not self.closed and len(self.buffer) >= 2:
            buf = self.buffer
            first, second = buf[0], buf[1]
            fin, opcode, length, position = first & 0x80, first & 0x0F, second & 0x7F, 2
            if length == 126:
                if len(buf) < 4:
                    break
                (length,) = struct.unpack_from("!H", buf, 2)
                position = 4
            elif length == 127:
                if len(buf) < 10:
                    break
                (length,) = struct.unpack_from("!Q", buf, 2)
                position = 10
                if length >> 63:
                    raise Violation(1002, "64-bit length with the most significant bit set")
            fragmented = sum(map(len, self.fragments or ()))
            if opcode in (ws.OP_CONTINUATION, ws.OP_TEXT, ws.OP_BINARY) and \
                    (fragmented if opcode == ws.OP_CONTINUATION else 0) + length \
                    > self.max_message:
                raise Violation(1009, "message over the size limit")
            masked = second & 0x80
            end = position + (4 if masked else 0) + length
            if len(buf) < end:
                break  # judged once the whole frame is here
            if bool(masked) != self.masked:
                raise Violation(1002, "masking")
            if first & 0x70:
                raise Violation(1002, "reserved bits set")
            if opcode in (ws.OP_CLOSE, ws.OP_PING, ws.OP_PONG):
                if not fin or length > 125:
                    raise Violation(1002, "fragmented or long control frame")
            elif opcode == ws.OP_CONTINUATION:
                if self.fragments is None:
                    raise Violation(1002, "continuation without a message")
            elif opcode in (ws.OP_TEXT, ws.OP_BINARY):
                if self.fragments is not None:
                    raise Violation(1002, "a new message inside a fragmented one")
            else:
                raise Violation(1002, f"reserved opcode {opcode}")
            payload = bytes(buf[position + (4 if masked else 0):end])
            if masked:
                payload = mask_bytes(payload, bytes(buf[position:position + 4]))
            del buf[:end]
            self._take(opcode, bool(fin), payload, messages)
        return messages

    def _take(self, opcode: int, fin: bool, payload: bytes,
              messages: list[tuple[int, object]]) -> None:
        if opcode == ws.OP_CLOSE:
            code, reason = 1005, ""
            if len(payload) == 1:
                raise Violation(1002, "a close frame with a 1-byte payload")
            if payload:
                (code,) = struct.unpack_from("!H", payload)
                if code not in VALID_CLOSE_CODES:
                    raise Violation(1002, f"close code {code}")
                try:
                    reason = payload[2:].decode()
                except UnicodeDecodeError:
                    raise Violation(1007, "close reason not UTF-8") from None
            self.closed = True
            messages.append((opcode, (code, reason)))
            return
        if opcode in (ws.OP_PING, ws.OP_PONG):
            messages.append((opcode, payload))
            return
        if opcode != ws.OP_CONTINUATION:
            self.fragments, self.fragment_opcode = [], opcode
        assert self.fragments is not None
        self.fragments.append(payload)
        if not fin:
            return
        whole, kind = b"".join(self.fragments), self.fragment_opcode
        self.fragments = None
        if kind == ws.OP_TEXT:
            try:
                messages.append((kind, whole.decode()))
            except UnicodeDecodeError:
                raise Violation(1007, "text not UTF-8") from None
        else:
            messages.append((kind, whole))


def opening_request(host: str, target: str, key: str, protocols: list[str]) -> bytes:
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    if protocols:
        lines.append(f"Sec-WebSocket-Protocol: {', '.join(protocols)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def accept_key(key: str) -> bytes:
    return base64.b64encode(hashlib.sha1(key.encode() + ws.GUID).digest())


# -- raw framing ---------------------------------------------------------------------------


def mask_bytes(payload: bytes, key: bytes) -> bytes:
    return bytes(b ^ key[i % 4] for i, b in enumerate(payload)) if len(payload) < 64 else \
        (int.from_bytes(payload, "little") ^ int.from_bytes(
            (key * (len(payload) // 4 + 1))[:len(payload)], "little")).to_bytes(
            len(payload), "little")


def raw_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0,
              mask: bytes | None = b"\x5a\x17\xc3\x01", length: int | None = None) -> bytes:
    """One frame as a client would send it (masked unless `mask` is None), any header."""
    length = len(payload) if length is None else length
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    masked = 0x80 if mask is not None else 0
    if length < 126:
        head = bytes((first, masked | length))
    elif length < 65_536:
        head = struct.pack("!BBH", first, masked | 126, length)
    else:
        head = struct.pack("!BBQ", first, masked | 127, length)
    return head + payload if mask is None else head + mask + mask_bytes(payload, mask)


def data_opcode(codec: str) -> int:
    return ws.OP_TEXT if codec == "json" else ws.OP_BINARY


def encode_value(value: Any, codec: str, ascii_only: bool = True) -> bytes:
    return to_json(value, ascii_only).encode("utf-8", "surrogatepass") if codec == "json" \
        else to_msgpack(value)


# -- what the server must answer (an oracle from the documented protocol) ----------------


@dataclass
class Expect:
    violation: str | None = None  # framing broken: a close frame is required
    client_close: bool = False  # the client closed: the close is echoed
    incomplete: bool = False  # ends inside a frame: the server is waiting for more
    reqs: list[str] = field(default_factory=list)  # each needs its reply (or an error)
    errors: int = 0  # unusable messages: an error frame each, before the sentinel's pong
    ws_pings: int = 0  # a pong at least


def app_outcome(codec: str, opcode: int, payload: object) -> tuple[str | None, bool]:
    """(the req that must be answered, whether an error frame is owed) for one message."""
    assert isinstance(payload, str | bytes)
    if len(payload) > MAX_FRAME:
        return None, True
    if (opcode == ws.OP_TEXT) != (codec == "json"):
        return None, True
    try:
        frame = json.loads(payload) if codec == "json" else msgpack.unpackb(
            payload, raw=False, strict_map_key=False)
    except Exception:
        return None, True
    if not isinstance(frame, dict):
        return None, True
    req = frame.get("req")
    if req is not None:
        if isinstance(req, str) and len(req) <= 64:
            return req, False
        return None, True
    kind = frame.get("type")
    if not isinstance(kind, str) or kind not in FRAME_TYPES or kind == "send":
        return None, True
    return None, False


def expect_for(codec: str, wire: bytes) -> Expect:
    expect = Expect()
    parser = FrameParser(masked=True, max_message=MAX_MESSAGE)
    try:
        messages = parser.feed(wire)
    except Violation as exc:
        expect.violation = str(exc)
        return expect
    for opcode, payload in messages:
        if opcode == ws.OP_CLOSE:
            expect.client_close = True
            return expect
        if opcode == ws.OP_PING:
            expect.ws_pings += 1
        elif opcode in (ws.OP_TEXT, ws.OP_BINARY):
            req, error = app_outcome(codec, opcode, payload)
            if req is not None:
                expect.reqs.append(req)
            elif error:
                expect.errors += 1
    if parser.buffer:
        expect.incomplete = True  # the server waits for the rest of a frame
    elif parser.in_message:
        expect.violation = "the next frame (the sentinel) comes inside an unfinished message"
    return expect


# -- cases ---------------------------------------------------------------------------------


@dataclass
class Case:
    label: str
    codec: str
    chunks: list[bytes]  # written one send_all each
    spec: Any = None
    expect: Expect = field(default_factory=Expect)
    index: int = 0

    @property
    def size(self) -> int:
        return sum(map(len, self.chunks))

    def describe(self) -> str:
        wire = b"".join(self.chunks)
        lines = [f"case #{self.index} [{self.label}] codec={self.codec} "
                 f"{len(self.chunks)} write(s), {len(wire)} bytes"]
        if self.spec is not None:
            lines.append(f"  spec: {short(self.spec, 600)}")
        lines.append(f"  wire: {short(wire, 600)}")
        return "\n".join(lines)


def make_case(label: str, codec: str, chunks: list[bytes], spec: Any = None) -> Case:
    return Case(label, codec, chunks, spec, expect_for(codec, b"".join(chunks)))


@dataclass(frozen=True)
class FrameSpec:
    codec: str
    value: Any
    wrong_opcode: bool = False
    ascii_only: bool = True
    #: None: one frame; else the payload cut at these fractions into fragments.
    cuts: tuple[float, ...] | None = None
    empty_continuations: int = 0
    pings_between: int = 0
    split_writes: bool = False
    mask: bytes = b"\x5a\x17\xc3\x01"


@dataclass(frozen=True)
class FloodSpec:
    codec: str
    app_pings: int
    ws_pings: int
    ping_payload: bytes


@dataclass(frozen=True)
class MutatedSpec:
    base: FrameSpec
    mutations: tuple[tuple[str, float, int], ...]


@dataclass(frozen=True)
class ViolationSpec:
    codec: str
    kind: str
    number: int
    data: bytes


def materialize(value: Any, index: int) -> Any:
    if isinstance(value, UniqueReq):
        return f"{value.prefix[:40]}~{index}"
    if isinstance(value, Map):
        return Map(tuple((materialize(k, index), materialize(v, index)) for k, v in value.pairs))
    if isinstance(value, list):
        return [materialize(item, index) for item in value]
    return value


def frame_wire(spec: FrameSpec) -> list[bytes]:
    payload = encode_value(spec.value, spec.codec, spec.ascii_only)
    opcode = data_opcode(spec.codec)
    if spec.wrong_opcode:
        opcode = ws.OP_BINARY if opcode == ws.OP_TEXT else ws.OP_TEXT
    if spec.cuts is None and not spec.empty_continuations:
        return [raw_frame(opcode, payload, mask=spec.mask)]
    points = sorted({int(len(payload) * cut) for cut in spec.cuts or ()} | {0, len(payload)})
    parts = [payload[a:b] for a, b in itertools.pairwise(points)] or [b""]
    frames = [raw_frame(opcode, parts[0], fin=False, mask=spec.mask)]
    middle = parts[1:-1] if len(parts) > 1 else []
    for n, part in enumerate(middle):
        frames.append(raw_frame(ws.OP_CONTINUATION, part, fin=False, mask=spec.mask))
        if n < spec.pings_between:
            frames.append(raw_frame(ws.OP_PING, b"between", mask=spec.mask))
    empty = raw_frame(ws.OP_CONTINUATION, b"", fin=False, mask=spec.mask)
    frames.extend([empty] * spec.empty_continuations)
    frames.extend(raw_frame(ws.OP_PING, b"p", mask=spec.mask)
                  for _ in range(max(0, spec.pings_between - len(middle))))
    frames.append(raw_frame(ws.OP_CONTINUATION, parts[-1] if len(parts) > 1 else b"",
                            mask=spec.mask))
    return frames if spec.split_writes else [b"".join(frames)]


def build_frame_case(spec: FrameSpec, index: int) -> Case:
    spec = dataclasses.replace(spec, value=materialize(spec.value, index))
    label = "fragmented" if spec.cuts is not None or spec.empty_continuations else "frame"
    return make_case(f"{label}:{spec.codec}", spec.codec, frame_wire(spec), spec)


def build_flood_case(spec: FloodSpec, index: int) -> Case:
    opcode = data_opcode(spec.codec)
    frames = [raw_frame(ws.OP_PING, spec.ping_payload) for _ in range(spec.ws_pings)]
    frames += [raw_frame(opcode, encode_value(
        Map((("type", "ping"), ("req", f"flood{index}.{n}"))), spec.codec))
        for n in range(spec.app_pings)]
    return make_case(f"flood:{spec.codec}", spec.codec, [b"".join(frames)], spec)


def build_mutated_case(spec: MutatedSpec, index: int) -> Case:
    base = dataclasses.replace(spec.base, value=materialize(spec.base.value, index))
    wire = bytearray(b"".join(frame_wire(base)))
    for op, where, byte in spec.mutations:
        at = min(int(len(wire) * where), max(0, len(wire) - 1))
        if op == "flip" and wire:
            wire[at] ^= 1 << (byte % 8)
        elif op == "set" and wire:
            wire[at] = byte
        elif op == "truncate":
            del wire[max(at, 1):]
        elif op == "insert":
            wire[at:at] = bytes([byte])
        elif op == "header" and len(wire) >= 2:
            wire[byte % 2] = byte  # first or second header byte
    return make_case(f"mutated:{base.codec}", base.codec, [bytes(wire)],
                     MutatedSpec(base, spec.mutations))


def build_violation_case(spec: ViolationSpec, index: int) -> Case:
    codec, data, n = spec.codec, spec.data, spec.number
    ok = encode_value(Map((("type", "ping"), ("req", f"v{index}"))), codec)
    op = data_opcode(codec)
    builders: dict[str, Callable[[], list[bytes]]] = {
        "unmasked": lambda: [raw_frame(op, ok, mask=None)],
        "rsv": lambda: [raw_frame(op, ok, rsv=1 + n % 7)],
        "reserved_opcode": lambda: [raw_frame((3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF)[n % 10],
                                              data)],
        "big_control": lambda: [raw_frame((ws.OP_PING, ws.OP_PONG, ws.OP_CLOSE)[n % 3],
                                          ((data or b"x") * 400)[:126 + n % 200])],
        "fragmented_control": lambda: [raw_frame(ws.OP_PING, data[:100], fin=False)],
        "orphan_continuation": lambda: [raw_frame(ws.OP_CONTINUATION, data, fin=n % 2 == 0)],
        "data_inside_fragments": lambda: [raw_frame(op, ok[:3], fin=False), raw_frame(op, ok)],
        "close_one_byte": lambda: [raw_frame(ws.OP_CLOSE, data[:1] or b"\x03")],
        "close_bad_code": lambda: [raw_frame(ws.OP_CLOSE, struct.pack(
            "!H", (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535)[n % 10]))],
        "close_bad_reason": lambda: [raw_frame(ws.OP_CLOSE, b"\x03\xe8\xff\xfe" + data)],
        "text_not_utf8": lambda: [raw_frame(ws.OP_TEXT, b'{"type":"ping","req":"\xed\xa0\x80"}')],
        "huge_length": lambda: [raw_frame(op, b"", length=(MAX_MESSAGE + 1, 2**32, 2**63,
                                                           2**64 - 1)[n % 4])[:14]],
        "msb_length": lambda: [bytes((0x80 | op, 0xFF)) + struct.pack("!Q", 2**63 + n)],
        "message_over_limit": lambda: [raw_frame(op, b"0123456789", fin=False) + raw_frame(
            ws.OP_CONTINUATION, b"", length=MAX_MESSAGE)[:14]],
    }
    case = make_case(f"violation:{spec.kind}", codec, builders[spec.kind](), spec)
    if case.expect.violation is None:
        # Each of these breaks RFC 6455 or a documented limit, whatever the reader says.
        case.expect = Expect(violation=spec.kind)
    return case


BUILDERS: dict[type, Callable[[Any, int], Case]] = {
    FrameSpec: build_frame_case, FloodSpec: build_flood_case,
    MutatedSpec: build_mutated_case, ViolationSpec: build_violation_case}
VIOLATIONS = ("unmasked", "rsv", "reserved_opcode", "big_control", "fragmented_control",
              "orphan_continuation", "data_inside_fragments", "close_one_byte",
              "close_bad_code", "close_bad_reason", "text_not_utf8", "huge_length",
              "msb_length", "message_over_limit")


# -- strategies ----------------------------------------------------------------------------

SURROGATES = ("\ud800", "\udfff", "\udc00", "a\ud83d", "\ud83d\ude00")
fuzz_text = st.one_of(
    st.text(max_size=12),
    st.sampled_from(("", "send", "ping", "type", "req", "\x00", "\u202e", "\ufeff", "﷽",
                     "a" * 64, "a" * 65, *SURROGATES)),
    st.lists(st.one_of(st.characters(), st.sampled_from(SURROGATES)), max_size=8).map("".join),
)
HUGE_INTS = (2**64, 2**64 - 1, 2**63, 2**63 - 1, -(2**63), -(2**63) - 1, -(2**70), 2**70,
             2**53 + 1, -1, 0, 2**1000)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.sampled_from(HUGE_INTS),
    st.floats(allow_nan=True, allow_infinity=True), fuzz_text, st.binary(max_size=12),
    st.sampled_from((Literal("1e999"), Literal("-0"), Literal("1" * 4301), Literal("NaN"),
                     Literal("123456789012345678901234567890"),
                     msgpack.ExtType(1, b"x"), RawPack(b"\xd6\xff\x00\x00\x00\x01"),
                     RawPack(b"\xd4\xff\x00"), RawPack(b"\xc1"),
                     RawPack(b"\xc7\x00\x05"))),
)
anything = st.recursive(
    scalars,
    lambda kids: st.one_of(
        st.lists(kids, max_size=4),
        st.lists(st.tuples(st.one_of(fuzz_text, kids), kids), max_size=4).map(
            lambda pairs: Map(tuple(pairs)))),
    max_leaves=10,
)
deep = st.builds(Deep, st.sampled_from(("array", "map")),
                 st.sampled_from((200, 999, 1000, 1001, 2000, 5000, 20_000)))


def valid_values(conversations: Sequence[str]) -> dict[str, st.SearchStrategy[Any]]:
    conversation_id = st.one_of(
        st.sampled_from(conversations), st.sampled_from(conversations),
        st.from_regex(r"[0-9]{1,20}", fullmatch=True),
        st.sampled_from(("0", "-1", " 1", "1 ", "\uff11", "\u0663", "1e3", "0x10", "9" * 19,
                         str(2**63), str(2**64))),
        st.integers(-(2**64), 2**64))
    seq = st.one_of(st.integers(0, 5), st.sampled_from(HUGE_INTS), st.integers())
    body = st.one_of(
        st.text(max_size=40), st.sampled_from(SURROGATES),
        st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()),
        st.binary(max_size=40),
        st.sampled_from((65_536, 65_537, 200_000)).map(lambda n: "x" * n),
        st.sampled_from(("not base64!", "QQ", "QQ==\n")))
    return {
        "conversation_id": conversation_id,
        "seq": seq,
        "client_msg_id": st.one_of(st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True),
                                   st.sampled_from(("", "x" * 65, "a b", "\ud800"))),
        "content_type": st.sampled_from(("text/plain", "text/markdown",
                                         "application/octet-stream", "image/png",
                                         "chatd/system", "TEXT/PLAIN", "text/", "/", "a/b/c",
                                         "text/plain; charset=utf-8")),
        "body": body,
        "cursors": st.lists(st.tuples(st.one_of(conversation_id, anything), seq),
                            max_size=4).map(lambda pairs: Map(tuple(pairs))),
    }


req_values = st.one_of(
    st.builds(UniqueReq, fuzz_text), st.builds(UniqueReq, st.just("r")),
    st.builds(UniqueReq, st.just("r")), st.none(), st.just("x" * 65), anything)


@st.composite
def frame_values(draw: st.DrawFn, conversations: Sequence[str]) -> Any:
    """A frame of each type: each field valid, wrong-typed, missing, or deeply nested."""
    valid = valid_values(conversations)
    kind = draw(st.sampled_from(FRAME_TYPES))
    pairs: list[tuple[Any, Any]] = []
    if draw(st.integers(0, 9)) == 0:
        pairs.append(("type", draw(st.one_of(fuzz_text, anything))))
    else:
        pairs.append(("type", kind))
    req_mode = draw(st.integers(0, 5))
    if req_mode < 4:
        pairs.append(("req", draw(st.builds(UniqueReq, fuzz_text)) if req_mode < 3
                      else draw(req_values)))
    for name in FIELDS[kind]:
        mode = draw(st.integers(0, 9))
        if mode < 6:
            pairs.append((name, draw(valid[name])))
        elif mode < 8:
            pairs.append((name, draw(anything)))
        elif mode == 8:
            pairs.append((name, draw(deep)))
    pairs += draw(st.lists(st.tuples(fuzz_text, anything), max_size=2))
    if draw(st.booleans()):
        pairs = draw(st.permutations(pairs))
    return Map(tuple(pairs))


def top_values(conversations: Sequence[str]) -> st.SearchStrategy[Any]:
    return st.one_of(frame_values(conversations), frame_values(conversations),
                     frame_values(conversations), anything, deep,
                     st.lists(frame_values(conversations), max_size=3))


codecs = st.sampled_from(("json", "msgpack"))


def frame_specs(conversations: Sequence[str]) -> st.SearchStrategy[FrameSpec]:
    return st.builds(
        FrameSpec, codecs, top_values(conversations),
        wrong_opcode=st.integers(0, 15).map(lambda n: n == 0),
        ascii_only=st.integers(0, 7).map(lambda n: n != 0),
        mask=st.binary(min_size=4, max_size=4))


def fragmented_specs(conversations: Sequence[str]) -> st.SearchStrategy[FrameSpec]:
    return st.builds(
        FrameSpec, codecs, frame_values(conversations),
        cuts=st.lists(st.floats(0, 1), min_size=1, max_size=12).map(tuple),
        empty_continuations=st.one_of(st.just(0), st.integers(1, 50), st.integers(500, 3000)),
        pings_between=st.integers(0, 20), split_writes=st.booleans(),
        mask=st.binary(min_size=4, max_size=4))


flood_specs = st.builds(FloodSpec, codecs, st.one_of(st.integers(0, 50), st.integers(0, 1500)),
                        st.one_of(st.integers(0, 50), st.integers(0, 3000)),
                        st.binary(max_size=125))


def mutated_specs(conversations: Sequence[str]) -> st.SearchStrategy[MutatedSpec]:
    return st.builds(MutatedSpec, frame_specs(conversations), st.lists(st.tuples(
        st.sampled_from(("flip", "flip", "set", "truncate", "insert", "header")),
        st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=3).map(tuple))


violation_specs = st.builds(ViolationSpec, codecs, st.sampled_from(VIOLATIONS),
                            st.integers(0, 1000), st.binary(max_size=40))


def case_specs(conversations: Sequence[str]) -> st.SearchStrategy[Any]:
    frames = frame_specs(conversations)
    return st.one_of(frames, frames, frames, frames, fragmented_specs(conversations),
                     flood_specs, mutated_specs(conversations), mutated_specs(conversations),
                     violation_specs)


def generate(conversations: Sequence[str], run_seed: int, count: int) -> list[Any]:
    """`count` case specs drawn by Hypothesis from `run_seed` (deterministic per seed)."""
    drawn: list[Any] = []

    @seed(run_seed)
    @settings(max_examples=count, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), derandomize=False)
    @given(case_specs(conversations))
    def collect(spec: Any) -> None:
        drawn.append(spec)

    collect()
    return drawn


def fixed_cases(conversations: Sequence[str]) -> list[tuple[str, str, list[bytes]] | Any]:
    """Known-nasty inputs, always run: (label, codec, chunks) or specs."""
    conv = conversations[0]

    def req(n: int) -> UniqueReq:
        return UniqueReq(f"fixed{n}")

    def send(body: Any, **extra: Any) -> Map:
        fields = {"type": "send", "req": req(0), "conversation_id": conv,
                  "client_msg_id": "fixed-1", "content_type": "text/plain", "body": body}
        fields.update(extra)
        return Map(tuple(fields.items()))

    cases: list[Any] = []
    for codec in ("json", "msgpack"):
        for depth in (1000, 5000, 50_000):
            cases.append(FrameSpec(codec, Deep("array", depth)))
            cases.append(FrameSpec(codec, send(Deep("map", depth))))
        cases += [
            FrameSpec(codec, Map((("type", "ping"), ("req", "\ud800")))),
            FrameSpec(codec, Map((("type", "ping"), ("req", req(1)), ("x", "\udfff")))),
            FrameSpec(codec, send("\ud800 lone")),
            FrameSpec(codec, send("ok", client_msg_id="\ud800")),
            FrameSpec(codec, Map((("type", "\ud800"), ("req", req(2))))),
            FrameSpec(codec, Map((("type", "ack"), ("req", req(3)), ("conversation_id", conv),
                                  ("seq", 2**64)))),
        ]
        for kind in ("ack", "read"):
            for number in (2**64, 2**63, -(2**70), 2**1000):
                cases.append(FrameSpec(codec, Map((("type", kind), ("req", req(4)),
                                                   ("conversation_id", conv),
                                                   ("seq", number)))))
        cases += [
            FrameSpec(codec, Map((("type", "sync"), ("req", req(5)),
                                  ("cursors", Map(((conv, 2**64),)))))),
            FrameSpec(codec, Map((("type", "sync"), ("req", req(6)),
                                  ("cursors", Map(((conv, 0),)))))),
            FrameSpec(codec, Map((("type", "typing"), ("req", req(7)),
                                  ("conversation_id", 2**64)))),
            FrameSpec(codec, Map((("type", "send"), ("req", req(8)), ("conversation_id", conv),
                                  ("client_msg_id", "big"), ("content_type", "text/plain"),
                                  ("body", "x" * 200_000)))),
            FrameSpec(codec, Map((("type", "ping"), ("req", req(9)))), empty_continuations=2000,
                      cuts=(0.5,)),
            FrameSpec(codec, Map((("type", "ping"), ("req", req(10)))), cuts=(0.2, 0.4, 0.6),
                      pings_between=50, split_writes=True),
            FloodSpec(codec, 0, 1000, b"x" * 125),
            FloodSpec(codec, 2000, 0, b""),
            FrameSpec(codec, Map((("type", "ping"), ("req", req(11)))), wrong_opcode=True),
        ]
        cases += [ViolationSpec(codec, kind, 0, b"xyz") for kind in VIOLATIONS]
    cases += [
        FrameSpec("msgpack", Map(((["list", "key"], 1), ("type", "ping"), ("req", req(12))))),
        FrameSpec("msgpack", Map(((Map((("a", 1),)), 1), ("type", "ping")))),
        FrameSpec("msgpack", Map((("type", "sync"), ("req", req(13)),
                                  ("cursors", Map(((["x"], 1),)))))),
        FrameSpec("msgpack", Map((("type", "ping"), ("req", RawPack(b"\xd4\xff\x00"))))),
        FrameSpec("json", Map((("type", "ping"), ("req", req(14)))), ascii_only=False),
        FrameSpec("json", Map((("type", "ping"), ("req", "\ud800"))), ascii_only=False),
        FrameSpec("json", Literal('{"type":"ping","req":"dup","req":"' + "d" * 70 + '"}')),
        FrameSpec("json", Literal('{"type":"ack","conversation_id":"' + conv
                                  + '","seq":' + "9" * 4301 + "}")),
    ]
    return cases


def build_cases(conversations: Sequence[str], random_seed: int,
                ) -> tuple[list[Case], dict[str, int]]:
    fixed = fixed_cases(conversations)
    seeded = generate(conversations, FIXED_SEED, EXAMPLES_PER_SEED)
    randomised = generate(conversations, random_seed, EXAMPLES_PER_SEED)
    cases = []
    for index, spec in enumerate([*fixed, *seeded, *randomised]):
        case = BUILDERS[type(spec)](spec, index)
        case.index = index
        cases.append(case)
    return cases, {"fixed": len(fixed), f"seed {FIXED_SEED}": len(seeded),
                   f"seed {random_seed}": len(randomised)}


# -- running a case against the server -----------------------------------------------------


class RawConnection:
    """One authenticated /ws connection over a plain TCP stream."""

    def __init__(self, stream: trio.SocketStream, codec: str) -> None:
        self.stream = stream
        self.codec = codec
        self.reader = FrameParser(masked=False, max_message=64 << 20)
        self.inbox: list[tuple[int, object]] = []

    @classmethod
    async def open(cls, url: str, token: str, codec: str) -> RawConnection:
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        with trio.fail_after(CASE_TIMEOUT):
            stream = await trio.open_tcp_stream(parts.hostname, parts.port)
            key = base64.b64encode(os.urandom(16)).decode()
            await stream.send_all(opening_request(
                f"{parts.hostname}:{parts.port}", f"/ws?token={token}", key,
                [f"chatd.{codec}"]))
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some()
                assert chunk, f"the server hung up during the handshake: {data!r}"
                data += chunk
        length = data.index(b"\r\n\r\n") + 4
        head = data[:length]
        assert head.startswith(b"HTTP/1.1 101 "), head
        headers = {name.strip().lower(): value.strip() for name, _, value in
                   (line.partition(b":") for line in head.split(b"\r\n")[1:] if line)}
        assert headers.get(b"sec-websocket-accept") == accept_key(key), head
        assert f"sec-websocket-protocol: chatd.{codec}".encode() in head.lower(), head
        conn = cls(stream, codec)
        conn.inbox.extend(conn.reader.feed(data[length:]))
        return conn

    async def receive(self) -> list[tuple[int, object]]:
        """The next messages; [] at EOF."""
        if self.inbox:
            messages, self.inbox = self.inbox, []
            return messages
        while True:
            try:
                data = await self.stream.receive_some(65_536)
            except trio.BrokenResourceError:
                data = b""
            if not data:
                return []
            messages = self.reader.feed(data)
            if messages:
                return messages

    def decode(self, opcode: int, payload: object) -> list[dict[str, Any]]:
        frame = json.loads(payload) if opcode == ws.OP_TEXT else msgpack.unpackb(  # type: ignore[arg-type]
            payload, raw=False)
        assert isinstance(frame, dict), frame
        items = frame["frames"] if frame.get("type") == "batch" else [frame]
        assert all(isinstance(item, dict) for item in items), frame
        return items

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self.stream.aclose()


@dataclass
class Outcome:
    end: str = "open"  # open | closed | dropped | timeout | invalid
    close_code: int | None = None
    close_reason: str = ""
    replies: dict[str, str] = field(default_factory=dict)  # req → type
    errors_before_sentinel: int = 0
    errors_without_req: int = 0
    pongs: int = 0
    detail: str = ""


def sentinel_frame(codec: str, req: str) -> bytes:
    return raw_frame(data_opcode(codec), encode_value(Map((("type", "ping"), ("req", req))),
                                                      codec))


async def play(conn: RawConnection, case: Case) -> Outcome:
    outcome = Outcome()
    expect = case.expect
    sentinel = f"~sentinel{case.index}"
    try:
        for chunk in case.chunks:
            await conn.stream.send_all(chunk)
        if expect.incomplete:
            return outcome  # the server waits for the rest of a frame: nothing is owed
        if not expect.client_close:
            await conn.stream.send_all(sentinel_frame(conn.codec, sentinel))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # it hung up on us; what it sent first (a close frame?) is still readable
    sentinel_seen = False
    with trio.move_on_after(CASE_TIMEOUT) as timer:
        while True:
            try:
                messages = await conn.receive()
            except Violation as exc:
                outcome.end, outcome.detail = "invalid", f"server sent a bad frame: {exc}"
                return outcome
            if not messages:
                outcome.end = "dropped"
                return outcome
            for opcode, payload in messages:
                if opcode == ws.OP_CLOSE:
                    outcome.end = "closed"
                    outcome.close_code, outcome.close_reason = payload  # type: ignore[misc]
                    return outcome
                if opcode == ws.OP_PONG:
                    outcome.pongs += 1
                    continue
                if opcode not in (ws.OP_TEXT, ws.OP_BINARY):
                    continue
                try:
                    items = conn.decode(opcode, payload)
                except Exception as exc:
                    outcome.end = "invalid"
                    outcome.detail = f"server sent an undecodable frame: {exc!r} {short(payload)}"
                    return outcome
                for item in items:
                    req = item.get("req")
                    if item.get("type") == "error":
                        if req is None:
                            outcome.errors_without_req += 1
                        if not sentinel_seen:
                            outcome.errors_before_sentinel += 1
                    if req == sentinel:
                        sentinel_seen = True
                    elif isinstance(req, str):
                        outcome.replies[req] = str(item.get("type"))
            if sentinel_seen and all(r in outcome.replies for r in expect.reqs) and (
                    outcome.pongs or not expect.ws_pings):
                return outcome
            if sentinel_seen and len([r for r in expect.reqs if r not in outcome.replies]) \
                    <= outcome.errors_without_req and (outcome.pongs or not expect.ws_pings):
                return outcome
    if timer.cancelled_caught:
        outcome.end = "timeout"
        outcome.detail = f"sentinel answered: {sentinel_seen}"
    return outcome


def judge(case: Case, outcome: Outcome) -> str | None:
    """The problem with this outcome, or None."""
    expect = case.expect
    if outcome.end == "invalid":
        return outcome.detail
    if outcome.end == "dropped":
        return "connection dropped without a close frame"
    if outcome.end == "timeout":
        return f"no answer within {CASE_TIMEOUT:g} s (stalled; {outcome.detail})"
    if outcome.end == "closed":
        if expect.client_close:
            return None
        if outcome.close_code not in ALLOWED_CLOSE:
            return f"closed with code {outcome.close_code} ({outcome.close_reason!r})"
        return None
    if expect.incomplete:
        return None
    if expect.violation:
        return f"protocol violation not closed ({expect.violation})"
    if expect.client_close:
        return "the client's close was not answered with a close frame"
    missing = [r for r in expect.reqs if r not in outcome.replies]
    if len(missing) > outcome.errors_without_req:
        return f"{len(missing)} request(s) never answered, e.g. req={short(missing[0], 80)}"
    if outcome.errors_before_sentinel < expect.errors:
        return (f"{expect.errors} unusable message(s) but {outcome.errors_before_sentinel} "
                "error frame(s) before the next answer")
    if expect.ws_pings and not outcome.pongs:
        return f"{expect.ws_pings} WebSocket ping(s) and no pong"
    return None


@dataclass
class Failure:
    problem: str
    case: Case
    logged: list[str]
    count: int = 1


def signature(problem: str, logged: list[str]) -> str:
    kind = problem.split(" e.g.")[0].split(" (")[0]
    for text in logged:
        lines = [line for line in text.splitlines() if line.strip()]
        tail = re.sub(r"'[^'\s]*'|\d+", "…", lines[-1])[:160]  # one key for one kind
        return f"{kind} | {tail}"
    return kind


# -- the bystander -------------------------------------------------------------------------


@dataclass
class Bystander:
    rounds: int = 0
    latencies: list[float] = field(default_factory=list)
    error: str | None = None

    async def run(self, sender: LiveConnection, receiver: LiveConnection, conv: str,
                  stop: trio.Event) -> None:
        try:
            while not stop.is_set():
                for source, sink in ((sender, receiver), (receiver, sender)):
                    text = f"bystander {self.rounds}"
                    started = trio.current_time()
                    with trio.fail_after(5):
                        await source.send(conv, text)
                        while True:
                            event = await sink.next_event()
                            if event["type"] == "message" and event["message"]["body"] == text:
                                break
                    self.latencies.append(trio.current_time() - started)
                    self.rounds += 1
                await trio.sleep(0.01)
        except Exception as exc:
            self.error = f"bystander failed after {self.rounds} round trips: {exc!r}"


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))] if ordered else 0.0


# -- the test ------------------------------------------------------------------------------


async def test_hostile_frames_never_stop_stall_or_poison_the_shard(
        server: RunningServer) -> None:
    random_seed = int(os.environ.get("CHATD_FUZZ_SEED") or random.randrange(2**32))
    print(f"\nws fuzz: fixed seed {FIXED_SEED}, random seed {random_seed} "
          f"(replay with CHATD_FUZZ_SEED={random_seed})")
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        fuzzer, peer = await new_account(http), await new_account(http)
        conversations = [await fuzzer.direct_with(peer), await fuzzer.group("fuzz", peer),
                         await fuzzer.direct_with(fuzzer)]
        cases, batches = await trio.to_thread.run_sync(build_cases, conversations, random_seed)
        generated = time.monotonic()
        print(f"ws fuzz: {len(cases)} cases ({batches}) generated in "
              f"{generated - started:.1f} s")

        failures: dict[str, Failure] = {}
        bystander = Bystander()
        stop = trio.Event()
        handle_b, handle_c = fresh_handle("bys"), fresh_handle("byc")
        recent: list[Case] = []  # the last cases run: a crash may show one case late
        ran = stalls = 0
        ends: dict[str, int] = {}
        try:
            async with ChatClient(server.url) as b, ChatClient(server.url) as c, \
                    error_log() as logged:
                for client, handle in ((b, handle_b), (c, handle_c)):
                    await client.register(handle, PASSWORD, handle)
                    await client.login(handle, PASSWORD)
                assert c.credentials is not None
                bys_conv = (await b.open_direct(c.credentials.user_id))["conversation_id"]
                async with b.connect() as live_b, c.connect("msgpack") as live_c, \
                        trio.open_nursery() as nursery:
                    nursery.start_soon(bystander.run, live_b, live_c, bys_conv, stop)
                    connections: dict[str, RawConnection] = {}
                    with trio.move_on_after(TOTAL_TIMEOUT):
                        for case in cases:
                            recent = [*recent[-2:], case]
                            conn = connections.get(case.codec)
                            if conn is None:
                                conn = connections[case.codec] = await RawConnection.open(
                                    server.url, fuzzer.token, case.codec)
                            seen = len(logged.records)
                            outcome = await play(conn, case)
                            await trio.lowlevel.checkpoint()
                            ran += 1
                            end = f"{case.label.split(':')[0]}→{outcome.end}"
                            ends[end] = ends.get(end, 0) + 1
                            if outcome.end != "open" or case.expect.incomplete:
                                del connections[case.codec]
                                await conn.aclose()
                            new_logs = logged.records[seen:]
                            problem = judge(case, outcome)
                            if problem is None and new_logs:
                                problem = "the server logged an error"
                            if problem is not None:
                                key = signature(problem, new_logs)
                                known = failures.get(key)
                                if known is None:
                                    failures[key] = Failure(problem, case, new_logs)
                                else:
                                    known.count += 1
                                    if case.size < known.case.size:
                                        known.case, known.problem = case, problem
                                        known.logged = new_logs or known.logged
                            if outcome.end == "timeout":
                                stalls += 1
                                if stalls >= MAX_STALLS:
                                    break
                    recent = []
                    for conn in connections.values():
                        await conn.aclose()
                    stop.set()
                with trio.fail_after(10):  # on a new connection
                    async with httpx.AsyncClient(base_url=server.url) as fresh:
                        health = await fresh.get("/healthz")
        finally:
            if recent:
                print("ws fuzz: interrupted; the last cases run:\n"
                      + "\n".join(case.describe() for case in recent))
    elapsed = time.monotonic() - started
    print(f"ws fuzz: ran {ran}/{len(cases)} cases in {elapsed:.1f} s; bystander "
          f"{bystander.rounds} round trips, p95 {p95(bystander.latencies) * 1000:.1f} ms")
    print(f"ws fuzz: outcomes {dict(sorted(ends.items()))}")
    report = []
    for key, failure in failures.items():
        report.append(f"--- {failure.count} case(s): {key}\n{failure.problem}\n"
                      f"{failure.case.describe()}\n  expected: {failure.case.expect}")
        report.extend(f"  server log:\n{text[-3000:]}" for text in failure.logged[:1])
    print("\n".join(report))
    assert health.status_code == 200, health.text
    assert bystander.error is None, bystander.error
    assert bystander.rounds > 0
    assert not failures, f"{len(failures)} distinct failure(s):\n" + "\n".join(report)
    assert stalls == 0 and ran == len(cases)
