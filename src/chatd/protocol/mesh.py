"""The shard mesh's wire protocol, sans-I/O: framing, frame kinds and the handshake.

`MeshConnection` is one side of one link between two shards. It takes received bytes
(`receive_data`) and returns typed events; what to send comes back as bytes, from its
`request`/`response`/`error`/`post`/`ping`/`pong`/`bye` methods and, for the handshake
frames it answers by itself, from `data_to_send()`. No sockets, no clock, no Trio here:
`chatd.transport` drives it (docs/mesh.md describes the whole link, failures included).

Framing: every frame is a 4-byte big-endian length, then that many bytes of one msgpack
map whose `kind` names the frame. The other fields of each kind are listed next to its
event class below. Unknown extra fields are ignored, so a field can be added within a
protocol version; a missing or ill-typed field, an unknown kind, a map with a non-string
key, anything that is not a map, a frame longer than the limit, or a frame the current
state does not allow raises `MeshProtocolError`: the link is closed, nothing else.

Handshake: both sides send HELLO at once. On the peer's HELLO each checks the protocol
version, the peer's name and the ring signature, then sends PROOF, an HMAC-SHA256 under
the cluster secret of both nonces, both names and the prover's role. The link is open
(`Established`) once the peer's PROOF checks out; before that only HELLO, PROOF and BYE
are read, and handshake frames are limited to `HANDSHAKE_FRAME_BYTES`. A refusal raises
`HandshakeRefused` whose reason names the difference ("peer b: ring signature abc !=
ours def"). The secret never crosses the wire, and a proof cannot be replayed: each side
picks a fresh nonce and checks a MAC over it.

Who dials: of two shards, the one whose name sorts first (`dials(us, them)`). One rule
both sides compute from the same names gives exactly one connection per pair, with no
tie to break when both dial at once.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import msgpack

#: Bumped on any change a peer of the previous version would misread. HELLO keeps its
#: fields in every version, so a mismatch is always reported rather than misparsed.
PROTOCOL_VERSION = 1
#: The longest frame read before the handshake is done: HELLO and PROOF are ~150 bytes,
#: and an unauthenticated peer must not make a link buffer a megabyte.
HANDSHAKE_FRAME_BYTES = 4096
DEFAULT_MAX_FRAME_BYTES = 1 << 20
NONCE_BYTES = 16
PROOF_BYTES = 32
#: Limits on the text fields of frames (characters).
MAX_NAME = 128
MAX_METHOD = 128
MAX_REASON = 512
MAX_ERROR_MESSAGE = 4096
#: Request ids are unsigned 64-bit integers.
MAX_ID = (1 << 64) - 1

_LENGTH = 4
#: The label of what a PROOF's MAC covers, so that it can never be mistaken for an HMAC
#: computed under the same secret for anything else.
_PROOF_LABEL = "chatd-mesh-proof"


class MeshProtocolError(Exception):
    """The peer broke the protocol; close the link. `reason` says how, for the log.
    `events` are those of the good frames that came before the bad one in the same
    data: handle them as usual, then close."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.events: list[Event] = []


class HandshakeRefused(MeshProtocolError):
    """The peer may not join this link: another version, ring or name, a bad proof, or
    its own refusal (a BYE before the link opened)."""


class FrameTooLarge(ValueError):
    """A frame we were asked to send is longer than the limit the peer reads."""


def dials(us: str, them: str) -> bool:
    """Whether shard `us` dials shard `them` (otherwise it waits for `them` to dial)."""
    return us < them


class Role(enum.Enum):
    DIALER = "dialer"
    ACCEPTOR = "acceptor"


class State(enum.Enum):
    #: Our HELLO is out; the peer's has not come.
    AWAIT_HELLO = "await hello"
    #: Both HELLOs are checked and our PROOF is out; the peer's has not come.
    AWAIT_PROOF = "await proof"
    OPEN = "open"
    #: A BYE went either way, or the peer broke the protocol. Nothing more is read.
    CLOSED = "closed"


# -- frames, each with its wire format ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """`{kind: "HELLO", version: int, shard: str, ring_signature: str, boot_id: str,
    nonce: bin(16..64)}`: sent by both sides first. `boot_id` is new each time a shard
    process starts: a peer seeing a new one knows the shard restarted."""

    version: int
    shard: str
    ring_signature: str
    boot_id: str
    nonce: bytes


@dataclass(frozen=True, slots=True)
class Proof:
    """`{kind: "PROOF", mac: bin(32)}`: HMAC-SHA256 under the cluster secret of the
    msgpack array `["chatd-mesh-proof", version, prover's role ("dialer"/"acceptor"),
    prover's name, verifier's name, dialer's nonce, acceptor's nonce]`. Sent once the
    peer's HELLO is accepted."""

    mac: bytes


@dataclass(frozen=True, slots=True)
class Request:
    """`{kind: "REQ", id: uint64, method: str, body: any, deadline_ms: uint}`: answered
    by exactly one RES with the same `id` (ids are the sender's, unique on the link).
    `deadline_ms` is how long the sender will wait, counted from when it sent the frame
    (relative, so the two hosts' clocks need not agree); an answer after it is dropped."""

    id: int
    method: str
    body: Any
    deadline_ms: int


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """The `error` map of a failed RES: `{status: int, code: str, message: str}`, plus
    `retry_after: float` (seconds) when the error carries one (a 429)."""

    status: int
    code: str
    message: str
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Response:
    """`{kind: "RES", id: uint64, ok: true, body: any}` or
    `{kind: "RES", id: uint64, ok: false, error: {status, code, message}}`."""

    id: int
    ok: bool
    body: Any = None
    error: ErrorInfo | None = None


@dataclass(frozen=True, slots=True)
class Post:
    """`{kind: "POST", method: str, body: any}`: one-way (deliveries, presence, typing);
    never answered, dropped rather than queued when the link is down or full."""

    method: str
    body: Any


@dataclass(frozen=True, slots=True)
class Ping:
    """`{kind: "PING"}`: sent every heartbeat interval; answered with PONG."""


@dataclass(frozen=True, slots=True)
class Pong:
    """`{kind: "PONG"}`. Liveness counts any frame received, so PONG is only the answer
    that keeps a peer with nothing else to say from looking silent."""


@dataclass(frozen=True, slots=True)
class Bye:
    """`{kind: "BYE", reason: str}`: the sender is closing the link, and says why (a
    handshake refusal, a protocol error, shutting down). Allowed in any state."""

    reason: str


@dataclass(frozen=True, slots=True)
class Established:
    """Not a frame: the handshake is done and the peer proved it knows the secret."""

    peer: str
    boot_id: str


Event = Request | Response | Post | Ping | Pong | Bye | Established
_Frame = Hello | Proof | Request | Response | Post | Ping | Pong | Bye


# -- decoding -------------------------------------------------------------------------------


def _field(frame: dict[str, Any], kind: str, name: str) -> Any:
    try:
        return frame[name]
    except KeyError:
        raise MeshProtocolError(f"{kind} frame without {name!r}") from None


def _int(frame: dict[str, Any], kind: str, name: str, top: int) -> int:
    value = _field(frame, kind, name)
    if type(value) is not int or not 0 <= value <= top:  # a bool is not an int here
        raise MeshProtocolError(f"{kind} frame: {name!r} must be an integer in 0..{top}, "
                                f"got {_shown(value)}")
    return value


def _str(frame: dict[str, Any], kind: str, name: str, longest: int) -> str:
    value = _field(frame, kind, name)
    if type(value) is not str or len(value) > longest:
        raise MeshProtocolError(f"{kind} frame: {name!r} must be a string of at most "
                                f"{longest} characters, got {_shown(value)}")
    return value


def _bytes(frame: dict[str, Any], kind: str, name: str, shortest: int, longest: int) -> bytes:
    value = _field(frame, kind, name)
    if type(value) is not bytes or not shortest <= len(value) <= longest:
        raise MeshProtocolError(f"{kind} frame: {name!r} must be {shortest}..{longest} "
                                f"bytes, got {_shown(value)}")
    return value


def _shown(value: Any) -> str:
    if isinstance(value, str | bytes):
        return f"{type(value).__name__} of length {len(value)}"
    return type(value).__name__


def _hello(frame: dict[str, Any]) -> Hello:
    return Hello(_int(frame, "HELLO", "version", MAX_ID),
                 _str(frame, "HELLO", "shard", MAX_NAME),
                 _str(frame, "HELLO", "ring_signature", MAX_NAME),
                 _str(frame, "HELLO", "boot_id", MAX_NAME),
                 _bytes(frame, "HELLO", "nonce", NONCE_BYTES, 64))


def _proof(frame: dict[str, Any]) -> Proof:
    return Proof(_bytes(frame, "PROOF", "mac", PROOF_BYTES, PROOF_BYTES))


def _request(frame: dict[str, Any]) -> Request:
    return Request(_int(frame, "REQ", "id", MAX_ID), _str(frame, "REQ", "method", MAX_METHOD),
                   _field(frame, "REQ", "body"), _int(frame, "REQ", "deadline_ms", MAX_ID))


def _response(frame: dict[str, Any]) -> Response:
    call_id = _int(frame, "RES", "id", MAX_ID)
    ok = _field(frame, "RES", "ok")
    if ok is True:
        return Response(call_id, True, _field(frame, "RES", "body"))
    if ok is not False:
        raise MeshProtocolError(f"RES frame: 'ok' must be a boolean, got {_shown(ok)}")
    error = _field(frame, "RES", "error")
    if type(error) is not dict:
        raise MeshProtocolError(f"RES frame: 'error' must be a map, got {_shown(error)}")
    retry_after = error.get("retry_after")
    if retry_after is not None and (type(retry_after) not in (int, float) or retry_after < 0):
        raise MeshProtocolError("RES frame: 'error.retry_after' must be a number >= 0")
    return Response(call_id, False, None, ErrorInfo(
        _int(error, "RES error", "status", 599),
        _str(error, "RES error", "code", MAX_NAME),
        _str(error, "RES error", "message", MAX_ERROR_MESSAGE),
        None if retry_after is None else float(retry_after)))


def _post(frame: dict[str, Any]) -> Post:
    return Post(_str(frame, "POST", "method", MAX_METHOD), _field(frame, "POST", "body"))


def _bye(frame: dict[str, Any]) -> Bye:
    return Bye(_str(frame, "BYE", "reason", MAX_REASON))


_PING = Ping()
_PONG = Pong()
_DECODERS: dict[str, Callable[[dict[str, Any]], _Frame]] = {
    "HELLO": _hello,
    "PROOF": _proof,
    "REQ": _request,
    "RES": _response,
    "POST": _post,
    "PING": lambda frame: _PING,
    "PONG": lambda frame: _PONG,
    "BYE": _bye,
}


def decode_frame(payload: bytes) -> _Frame:
    """One frame's msgpack map (the bytes after the length) as its event."""
    try:
        frame = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except (ValueError, TypeError, RecursionError) as exc:  # msgpack's errors are ValueErrors
        raise MeshProtocolError(f"a frame is not valid msgpack: {exc or type(exc).__name__}"
                                ) from None
    if type(frame) is not dict:
        raise MeshProtocolError(f"a frame must be a msgpack map, got {_shown(frame)}")
    for key in frame:
        if type(key) is not str:
            raise MeshProtocolError(f"frame keys must be strings, got {_shown(key)}")
    kind = frame.get("kind")
    decoder = _DECODERS.get(kind) if type(kind) is str else None
    if decoder is None:
        shown = repr(kind[:32]) if type(kind) is str else _shown(kind)
        raise MeshProtocolError(f"unknown frame kind {shown}")
    return decoder(frame)


# -- encoding -------------------------------------------------------------------------------


def encode_frame(fields: dict[str, Any], packer: msgpack.Packer | None = None) -> bytes:
    """A length-prefixed frame of `fields` as they are (tests use it to build bad frames)."""
    payload: bytes = (packer or msgpack.Packer()).pack(fields)
    return len(payload).to_bytes(_LENGTH, "big") + payload


def proof_mac(secret: bytes, prover_role: Role, prover: str, verifier: str,
              dialer_nonce: bytes, acceptor_nonce: bytes,
              version: int = PROTOCOL_VERSION) -> bytes:
    """The PROOF a side with `prover_role` sends (see `Proof`)."""
    message = msgpack.packb([_PROOF_LABEL, version, prover_role.value, prover, verifier,
                             dialer_nonce, acceptor_nonce])
    return hmac.new(secret, message, hashlib.sha256).digest()


# -- the connection -------------------------------------------------------------------------

#: What each state reads; anything else is a protocol error (as in h11/_state.py).
_ALLOWED: dict[State, tuple[type, ...]] = {
    State.AWAIT_HELLO: (Hello, Bye),
    State.AWAIT_PROOF: (Proof, Bye),
    State.OPEN: (Request, Response, Post, Ping, Pong, Bye),
    State.CLOSED: (),
}

_KINDS = {Hello: "HELLO", Proof: "PROOF", Request: "REQ", Response: "RES", Post: "POST",
          Ping: "PING", Pong: "PONG", Bye: "BYE"}


class MeshConnection:
    """One side of one mesh link: the handshake, then frames both ways.

    A dialer names the `peer` it dialed and accepts only that name; an acceptor accepts
    any of `peers` that `dials` it. `nonce` is for tests (a fresh random one otherwise).
    """

    __slots__ = ("_buffer", "_limit", "_max_frame", "_nonce", "_outbox", "_packer",
                 "_peer_hello", "_peers", "_ring_signature", "_said_bye", "_secret", "boot_id",
                 "expected_peer", "peer", "peer_boot_id", "role", "shard", "state", "version")

    def __init__(self, role: Role, *, shard: str, secret: bytes, ring_signature: str,
                 boot_id: str, peers: Collection[str], peer: str | None = None,
                 max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, nonce: bytes | None = None,
                 version: int = PROTOCOL_VERSION) -> None:
        if not secret:
            raise ValueError("the cluster secret must not be empty")
        if role is Role.DIALER and peer is None:
            raise ValueError("a dialer must name the peer it dials")
        self.role = role
        self.shard = shard
        self.version = version
        self.boot_id = boot_id
        self.expected_peer = peer
        self._peers = frozenset(peers)
        self._secret = secret
        self._ring_signature = ring_signature
        self._max_frame = max_frame_bytes
        self._limit = min(HANDSHAKE_FRAME_BYTES, max_frame_bytes)
        self._nonce = nonce if nonce is not None else os.urandom(NONCE_BYTES)
        self._packer = msgpack.Packer()
        self._buffer = bytearray()
        self._peer_hello: Hello | None = None
        #: The peer's name and boot id as its HELLO gave them: proven only once the
        #: link is open (`Established`).
        self.peer: str | None = None
        self.peer_boot_id: str | None = None
        self.state = State.AWAIT_HELLO
        self._said_bye = False
        self._outbox = bytearray(self._encode({
            "kind": "HELLO", "version": version, "shard": shard,
            "ring_signature": ring_signature, "boot_id": boot_id, "nonce": self._nonce}))

    def data_to_send(self) -> bytes:
        """The handshake frames owed to the peer (our HELLO, then our PROOF): send them
        after creating the connection and after each `receive_data`."""
        data = bytes(self._outbox)
        self._outbox.clear()
        return data

    # -- sending ----------------------------------------------------------------------------

    def _encode(self, fields: dict[str, Any]) -> bytes:
        payload: bytes = self._packer.pack(fields)
        if len(payload) > self._max_frame:
            raise FrameTooLarge(f"a {fields['kind']} frame of {len(payload)} bytes is over "
                                f"the mesh's limit of {self._max_frame}")
        return len(payload).to_bytes(_LENGTH, "big") + payload

    def _check_open(self, kind: str) -> None:
        if self.state is not State.OPEN:
            raise RuntimeError(f"cannot send {kind} in state {self.state.name}: "
                               "only BYE goes out before the handshake is done")

    def request(self, call_id: int, method: str, body: Any, deadline_ms: int) -> bytes:
        """Raises FrameTooLarge, or TypeError for a body msgpack cannot encode."""
        self._check_open("REQ")
        return self._encode({"kind": "REQ", "id": call_id, "method": method, "body": body,
                             "deadline_ms": deadline_ms})

    def response(self, call_id: int, body: Any) -> bytes:
        self._check_open("RES")
        return self._encode({"kind": "RES", "id": call_id, "ok": True, "body": body})

    def error(self, call_id: int, status: int, code: str, message: str,
              retry_after: float | None = None) -> bytes:
        self._check_open("RES")
        error: dict[str, Any] = {"status": status, "code": code,
                                 "message": message[:MAX_ERROR_MESSAGE]}
        if retry_after is not None:
            error["retry_after"] = retry_after
        return self._encode({"kind": "RES", "id": call_id, "ok": False, "error": error})

    def post(self, method: str, body: Any) -> bytes:
        self._check_open("POST")
        return self._encode({"kind": "POST", "method": method, "body": body})

    def ping(self) -> bytes:
        self._check_open("PING")
        return self._encode({"kind": "PING"})

    def pong(self) -> bytes:
        self._check_open("PONG")
        return self._encode({"kind": "PONG"})

    def bye(self, reason: str) -> bytes:
        """Our BYE (b"" if one was sent already); nothing is read after it. It may follow
        a MeshProtocolError, to tell the peer why the link closes."""
        if self._said_bye:
            return b""
        self._said_bye = True
        self.state = State.CLOSED
        self._buffer = bytearray()
        return self._encode({"kind": "BYE", "reason": reason[:MAX_REASON]})

    # -- receiving --------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> list[Event]:
        """The events in `data` (with what came before it), in order. Raises
        MeshProtocolError (HandshakeRefused during the handshake), carrying the events of
        the frames before the bad one, and then reads nothing more."""
        if self.state is State.CLOSED:
            return []
        buffer: bytes | bytearray
        if self._buffer:
            self._buffer += data
            buffer = self._buffer
        else:
            buffer = data
        events: list[Event] = []
        offset = 0
        end = len(buffer)
        try:
            while end - offset >= _LENGTH:
                length = int.from_bytes(buffer[offset:offset + _LENGTH], "big")
                if length > self._limit:
                    raise MeshProtocolError(f"a frame of {length} bytes is over the limit of "
                                            f"{self._limit}{self._handshake_note()}")
                start = offset + _LENGTH
                if end - start < length:
                    break
                offset = start + length
                frame = decode_frame(bytes(buffer[start:offset]))
                if not isinstance(frame, _ALLOWED[self.state]):
                    raise MeshProtocolError(f"{_KINDS[type(frame)]} frame in state "
                                            f"{self.state.name}")
                if self.state is State.OPEN and type(frame) is not Bye:
                    events.append(frame)  # type: ignore[arg-type]  # Hello/Proof excluded
                elif self._advance(frame, events):
                    offset = end  # closed: the rest is not read
                    break
        except MeshProtocolError as error:
            self.state = State.CLOSED
            self._buffer = bytearray()
            error.events = events
            raise
        if buffer is self._buffer:
            del self._buffer[:offset]
        elif offset < end:
            self._buffer = bytearray(memoryview(buffer)[offset:])
        return events

    def _handshake_note(self) -> str:
        return " before the handshake is done" if self.state is not State.OPEN else ""

    def _advance(self, frame: _Frame, events: list[Event]) -> bool:
        """Take a handshake frame or a BYE; True if the link is now closed."""
        if isinstance(frame, Bye):
            opened = self.state is State.OPEN
            self.state = State.CLOSED
            if not opened:
                raise HandshakeRefused(f"{self._who()} refused the link: {frame.reason!r}")
            events.append(frame)
            return True
        elif isinstance(frame, Hello):
            self.peer, self.peer_boot_id = frame.shard, frame.boot_id  # claimed, not proven
            self._check_hello(frame)
            self._peer_hello = frame
            dialer_nonce, acceptor_nonce = self._nonces()
            self._outbox += self._encode({"kind": "PROOF", "mac": proof_mac(
                self._secret, self.role, self.shard, frame.shard, dialer_nonce,
                acceptor_nonce, self.version)})
            self.state = State.AWAIT_PROOF
        elif isinstance(frame, Proof):
            assert self.peer is not None
            dialer_nonce, acceptor_nonce = self._nonces()
            peer_role = Role.ACCEPTOR if self.role is Role.DIALER else Role.DIALER
            expected = proof_mac(self._secret, peer_role, self.peer, self.shard,
                                 dialer_nonce, acceptor_nonce, self.version)
            if not hmac.compare_digest(expected, frame.mac):
                raise HandshakeRefused(f"peer {self.peer}: bad proof (it does not know the "
                                       "cluster secret)")
            self.state = State.OPEN
            self._limit = self._max_frame
            events.append(Established(self.peer, self.peer_boot_id or ""))
        return False

    def _nonces(self) -> tuple[bytes, bytes]:
        assert self._peer_hello is not None
        if self.role is Role.DIALER:
            return self._nonce, self._peer_hello.nonce
        return self._peer_hello.nonce, self._nonce

    def _who(self) -> str:
        name = self.expected_peer or self.peer
        return f"peer {name}" if name else "the peer"

    def _check_hello(self, hello: Hello) -> None:
        name = hello.shard
        if hello.version != self.version:
            raise HandshakeRefused(f"peer {name}: protocol version {hello.version} != ours "
                                   f"{self.version}")
        if self.role is Role.DIALER:
            if name != self.expected_peer:
                raise HandshakeRefused(f"peer {self.expected_peer}: it says it is {name!r}")
        elif name == self.shard:
            raise HandshakeRefused(f"peer {name}: it has our own name")
        elif name not in self._peers:
            known = ", ".join(sorted(self._peers)) or "none"
            raise HandshakeRefused(f"peer {name!r}: unknown shard (our peers: {known})")
        elif not dials(name, self.shard):
            raise HandshakeRefused(f"peer {name}: it dialed us, but {self.shard} dials "
                                   f"{name} (the name that sorts first dials)")
        if hello.ring_signature != self._ring_signature:
            raise HandshakeRefused(f"peer {name}: ring signature {hello.ring_signature} != "
                                   f"ours {self._ring_signature}")
