"""The mesh codec and handshake, sans-I/O: two `MeshConnection`s wired together."""

from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest

from chatd.protocol import mesh
from chatd.protocol.mesh import (
    Bye,
    Established,
    HandshakeRefused,
    MeshConnection,
    MeshProtocolError,
    Ping,
    Pong,
    Post,
    Request,
    Response,
    Role,
    State,
    encode_frame,
)

SECRET = b"s" * 32


def dialer(**overrides: Any) -> MeshConnection:
    settings: dict[str, Any] = dict(shard="a", secret=SECRET, ring_signature="ring1",
                                    boot_id="boot-a", peers=["b", "c"], peer="b")
    settings.update(overrides)
    return MeshConnection(Role.DIALER, **settings)


def acceptor(**overrides: Any) -> MeshConnection:
    settings: dict[str, Any] = dict(shard="b", secret=SECRET, ring_signature="ring1",
                                    boot_id="boot-b", peers=["a", "c"])
    settings.update(overrides)
    return MeshConnection(Role.ACCEPTOR, **settings)


def shake(one: MeshConnection, two: MeshConnection) -> tuple[list[Any], list[Any]]:
    """Exchange handshake bytes until neither has more to say; each side's events."""
    got_one: list[Any] = []
    got_two: list[Any] = []
    for _ in range(4):
        to_two, to_one = one.data_to_send(), two.data_to_send()
        if not to_two and not to_one:
            break
        got_two += two.receive_data(to_two)
        got_one += one.receive_data(to_one)
    return got_one, got_two


def open_pair(**options: Any) -> tuple[MeshConnection, MeshConnection]:
    a, b = dialer(**options), acceptor(**options)
    got_a, got_b = shake(a, b)
    assert got_a == [Established("b", "boot-b")]
    assert got_b == [Established("a", "boot-a")]
    assert a.state is b.state is State.OPEN
    return a, b


# -- framing ----------------------------------------------------------------------------------


def test_frames_survive_any_chunking() -> None:
    a, b = open_pair()
    wire = b"".join([
        a.request(1, "send", {"text": "héllo", "blob": b"\x00" * 300}, 2000),
        a.post("deliver", [1, 2, 3]),
        a.ping(),
        a.response(7, None),
        a.error(8, 404, "not_found", "no such conversation"),
        a.error(9, 429, "rate_limited", "slow down", retry_after=1.5),
        a.pong(),
        a.request(2, "big", "x" * 70_000, 0),
    ])
    expected = [
        Request(1, "send", {"text": "héllo", "blob": b"\x00" * 300}, 2000),
        Post("deliver", [1, 2, 3]),
        Ping(),
        Response(7, True, None),
        Response(8, False, None, mesh.ErrorInfo(404, "not_found", "no such conversation")),
        Response(9, False, None, mesh.ErrorInfo(429, "rate_limited", "slow down", 1.5)),
        Pong(),
        Request(2, "big", "x" * 70_000, 0),
    ]
    assert b.receive_data(wire) == expected
    rng = random.Random(7)
    for _ in range(20):
        _, fresh = open_pair()
        got: list[Any] = []
        position = 0
        while position < len(wire):
            step = rng.choice((1, 2, 3, 5, 17, 1000, 40_000))
            got += fresh.receive_data(wire[position:position + step])
            position += step
        assert got == expected
    byte_by_byte = open_pair()[1]
    got = []
    for n in range(len(wire)):
        got += byte_by_byte.receive_data(wire[n:n + 1])
    assert got == expected


def test_the_handshake_completes_across_single_bytes() -> None:
    a, b = dialer(), acceptor()
    to_b, to_a = a.data_to_send(), b.data_to_send()
    got_b = [event for n in range(len(to_b)) for event in b.receive_data(to_b[n:n + 1])]
    got_a = [event for n in range(len(to_a)) for event in a.receive_data(to_a[n:n + 1])]
    assert got_a == got_b == []
    proof_b, proof_a = a.data_to_send(), b.data_to_send()
    assert [e for n in range(len(proof_b)) for e in b.receive_data(proof_b[n:n + 1])] == [
        Established("a", "boot-a")]
    assert a.receive_data(proof_a) == [Established("b", "boot-b")]


def test_frames_right_after_the_proof_in_the_same_read_are_returned() -> None:
    a, b = dialer(), acceptor()
    hello_a = a.data_to_send()
    b.receive_data(hello_a)
    assert a.receive_data(b.data_to_send()) == [Established("b", "boot-b")]  # HELLO + PROOF
    assert b.receive_data(a.data_to_send() + a.post("hi", 1)) == [Established("a", "boot-a"),
                                                                  Post("hi", 1)]


def test_an_oversized_length_is_refused_before_its_body_arrives() -> None:
    _, b = open_pair(max_frame_bytes=1000)
    with pytest.raises(MeshProtocolError, match="1001 bytes is over the limit of 1000"):
        b.receive_data((1001).to_bytes(4, "big"))
    assert b.state is State.CLOSED
    assert b.receive_data(b"anything") == []


def test_handshake_frames_are_limited_to_a_few_kilobytes() -> None:
    with pytest.raises(MeshProtocolError, match="before the handshake"):
        acceptor().receive_data((mesh.HANDSHAKE_FRAME_BYTES + 1).to_bytes(4, "big"))
    with pytest.raises(MeshProtocolError, match="limit"):
        acceptor().receive_data(b"GET / HTTP/1.1\r\n")  # 0x47455420 bytes long


def test_we_refuse_to_send_what_the_peer_would_refuse() -> None:
    a, _ = open_pair(max_frame_bytes=1000)
    with pytest.raises(mesh.FrameTooLarge, match="over the mesh's limit of 1000"):
        a.request(1, "m", "x" * 1000, 10)
    assert a.post("m", "ok") and a.state is State.OPEN


#: Ill-formed frames and why each is refused (ids by position: some payloads are random).
ILL_FORMED = [
    (b"\xc1", "not valid msgpack"),
    (b"\x81\xa1k", "not valid msgpack"),  # truncated
    (b"\x92\x01\x02", "must be a msgpack map"),
    (b"\x01", "must be a msgpack map"),
    (msgpack.packb({b"kind": "PING"}), "keys must be strings"),
    (msgpack.packb({"kind": "NOPE"}), "unknown frame kind 'NOPE'"),
    (msgpack.packb({"kind": 3}), "unknown frame kind int"),
    (msgpack.packb({"no": "kind"}), "unknown frame kind NoneType"),
    (msgpack.packb({"kind": "REQ", "id": 1, "method": "m", "body": 1}), "without 'deadline_ms'"),
    (msgpack.packb({"kind": "REQ", "id": True, "method": "m", "body": 1, "deadline_ms": 1}),
     "'id' must be an integer"),
    (msgpack.packb({"kind": "REQ", "id": -1, "method": "m", "body": 1, "deadline_ms": 1}),
     "'id' must be an integer"),
    (msgpack.packb({"kind": "REQ", "id": 1, "method": b"m", "body": 1, "deadline_ms": 1}),
     "'method' must be a string"),
    (msgpack.packb({"kind": "RES", "id": 1, "ok": 1, "body": 1}), "'ok' must be a boolean"),
    (msgpack.packb({"kind": "RES", "id": 1, "ok": False, "error": "x"}), "must be a map"),
    (msgpack.packb({"kind": "RES", "id": 1, "ok": False,
                    "error": {"status": "500", "code": "c", "message": "m"}}), "'status'"),
    (msgpack.packb({"kind": "RES", "id": 1, "ok": True}), "without 'body'"),
    (msgpack.packb({"kind": "POST", "method": "m" * 200, "body": 1}), "at most 128"),
    (dialer().data_to_send()[4:], "HELLO frame in state OPEN"),
    (msgpack.packb({"kind": "PROOF", "mac": b"x" * 32}), "PROOF frame in state OPEN"),
]


@pytest.mark.parametrize(("payload", "reason"), ILL_FORMED,
                         ids=[f"{n}-{reason}" for n, (_, reason) in enumerate(ILL_FORMED)])
def test_ill_formed_frames_close_the_link(payload: bytes, reason: str) -> None:
    _, b = open_pair()
    frame = len(payload).to_bytes(4, "big") + payload
    with pytest.raises(MeshProtocolError, match=reason):
        b.receive_data(frame)
    assert b.state is State.CLOSED


def test_a_deep_body_is_a_protocol_error_not_a_crash() -> None:
    _, b = open_pair()
    payload = b"\x83\xa4kind\xa4POST\xa6method\xa1m\xa4body" + b"\x91" * 5000 + b"\x01"
    with pytest.raises(MeshProtocolError, match="not valid msgpack"):
        b.receive_data(len(payload).to_bytes(4, "big") + payload)


def test_unknown_fields_are_ignored() -> None:
    _, b = open_pair()
    frame = encode_frame({"kind": "POST", "method": "m", "body": None, "future": [1]})
    assert b.receive_data(frame) == [Post("m", None)]


def test_a_bye_closes_and_nothing_after_it_is_read() -> None:
    a, b = open_pair()
    wire = a.bye("shutting down") + encode_frame({"kind": "POST", "method": "late", "body": 1})
    assert b.receive_data(wire) == [Bye("shutting down")]
    assert b.state is a.state is State.CLOSED
    assert b.receive_data(encode_frame({"kind": "PING"})) == []
    assert a.bye("again") == b""  # one BYE per link


def test_nothing_goes_out_before_the_handshake() -> None:
    a = dialer()
    with pytest.raises(RuntimeError, match="cannot send REQ in state AWAIT_HELLO"):
        a.request(1, "m", None, 1)
    assert a.bye("no")


# -- the handshake ------------------------------------------------------------------------------


def test_handshake_frames_say_nothing_secret() -> None:
    a, b = dialer(), acceptor()
    hello = a.data_to_send()
    assert SECRET not in hello
    b.receive_data(hello)
    proof = b.data_to_send()
    assert SECRET not in proof
    fields = [mesh.decode_frame(proof[4:4 + int.from_bytes(proof[:4], "big")])]
    assert isinstance(fields[0], mesh.Hello) and fields[0].shard == "b"


@pytest.mark.parametrize("role", [Role.DIALER, Role.ACCEPTOR])
def test_a_peer_without_the_secret_is_refused_and_its_frames_are_not_read(role: Role) -> None:
    honest = dialer() if role is Role.DIALER else acceptor()
    impostor = (acceptor(secret=b"guess" * 8) if role is Role.DIALER
                else dialer(secret=b"guess" * 8))
    honest.receive_data(impostor.data_to_send())
    with pytest.raises(HandshakeRefused, match="bad proof"):  # it cannot check ours either
        impostor.receive_data(honest.data_to_send())
    # The impostor's proof, then frames it sends as if the link were open.
    wire = impostor.data_to_send() + encode_frame(
        {"kind": "REQ", "id": 1, "method": "send", "body": {}, "deadline_ms": 100})
    with pytest.raises(HandshakeRefused, match="bad proof"):
        honest.receive_data(wire)
    assert honest.state is State.CLOSED
    assert honest.receive_data(encode_frame({"kind": "PING"})) == []


def test_frames_before_the_proof_are_refused() -> None:
    b = acceptor()
    a = dialer()
    b.receive_data(a.data_to_send())
    with pytest.raises(MeshProtocolError, match="POST frame in state AWAIT_PROOF"):
        b.receive_data(encode_frame({"kind": "POST", "method": "m", "body": 1}))
    with pytest.raises(MeshProtocolError, match="REQ frame in state AWAIT_HELLO"):
        acceptor().receive_data(encode_frame(
            {"kind": "REQ", "id": 1, "method": "m", "body": 1, "deadline_ms": 1}))


def test_a_replayed_proof_fails_against_a_fresh_nonce() -> None:
    a, b = dialer(), acceptor()
    shake(a, b)
    # Record a's HELLO and PROOF from one handshake, replay them to a new acceptor.
    a2 = dialer(nonce=b"n" * 16)
    hello = a2.data_to_send()
    b2 = acceptor()
    b2.receive_data(hello)
    a2.receive_data(b2.data_to_send())
    recorded = hello + a2.data_to_send()
    with pytest.raises(HandshakeRefused, match="bad proof"):
        acceptor().receive_data(recorded)


def test_a_proof_is_bound_to_direction_and_names() -> None:
    nonces = (b"d" * 16, b"a" * 16)
    mac = mesh.proof_mac(SECRET, Role.DIALER, "a", "b", *nonces)
    assert mac != mesh.proof_mac(SECRET, Role.ACCEPTOR, "a", "b", *nonces)
    assert mac != mesh.proof_mac(SECRET, Role.DIALER, "b", "a", *nonces)
    assert mac != mesh.proof_mac(SECRET, Role.DIALER, "a", "b", *reversed(nonces))
    assert mac != mesh.proof_mac(b"other", Role.DIALER, "a", "b", *nonces)


@pytest.mark.parametrize(("make_a", "make_b", "a_says", "b_says"), [
    (dict(ring_signature="abc"), dict(ring_signature="def"),
     "peer b: ring signature def != ours abc", "peer a: ring signature abc != ours def"),
    (dict(version=2), dict(),
     "peer b: protocol version 1 != ours 2", "peer a: protocol version 2 != ours 1"),
])
def test_mismatches_are_refused_on_both_sides_naming_the_difference(
        make_a: dict[str, Any], make_b: dict[str, Any], a_says: str, b_says: str) -> None:
    a, b = dialer(**make_a), acceptor(**make_b)
    to_b, to_a = a.data_to_send(), b.data_to_send()
    with pytest.raises(HandshakeRefused) as refused_by_a:
        a.receive_data(to_a)
    with pytest.raises(HandshakeRefused) as refused_by_b:
        b.receive_data(to_b)
    assert refused_by_a.value.reason == a_says
    assert refused_by_b.value.reason == b_says


@pytest.mark.parametrize(("claimed", "reason"), [
    ("x", "peer 'x': unknown shard (our peers: a, c)"),
    ("c", "peer c: it dialed us, but b dials c (the name that sorts first dials)"),
    ("b", "peer b: it has our own name"),
])
def test_the_acceptor_refuses_names_that_may_not_dial_it(claimed: str, reason: str) -> None:
    a = dialer(shard=claimed)
    with pytest.raises(HandshakeRefused) as refused:
        acceptor().receive_data(a.data_to_send())
    assert refused.value.reason == reason


def test_the_dialer_refuses_a_peer_with_another_name() -> None:
    with pytest.raises(HandshakeRefused, match="peer b: it says it is 'c'"):
        dialer().receive_data(acceptor(shard="c", peers=["a", "b"]).data_to_send())


def test_a_refusal_told_by_bye_is_a_refusal() -> None:
    a, b = dialer(), acceptor(peers=["c"])
    with pytest.raises(HandshakeRefused) as refused:
        b.receive_data(a.data_to_send())
    with pytest.raises(HandshakeRefused, match="peer b refused the link: \"peer 'a': unknown"):
        a.receive_data(b.data_to_send() + b.bye(refused.value.reason))


def test_who_dials() -> None:
    assert mesh.dials("a", "b") and not mesh.dials("b", "a")
    assert mesh.dials("shard-10", "shard-9")  # by code point, not numerically


def test_the_good_frames_before_a_bad_one_are_kept() -> None:
    a, b = open_pair()
    with pytest.raises(MeshProtocolError) as broken:
        b.receive_data(a.post("first", 1) + a.ping() + b"\x00\x00\x00\x01\xc1" + a.post("x", 2))
    assert broken.value.events == [Post("first", 1), Ping()]
