"""The shards' mesh ports against what is not a shard: garbage, an impostor that knows
the ring but not the secret, and a peer that says goodbye in the middle of a read."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable

import pytest
import trio

from chatd.client import ApiError, ChatClient, LiveConnection
from chatd.protocol.mesh import (
    MeshConnection,
    MeshProtocolError,
    Role,
    encode_frame,
)
from chatd.transport.link import handshake
from tests.cluster.harness import (
    HOST,
    NAMES,
    RING,
    SECRET,
    Cluster,
    Person,
    eventually,
    handle_homed_at,
    history,
    logged,
    messages,
    owner_of,
)
from tests.helpers import PASSWORD

WRONG_SECRET = b"not-the-cluster-secret-0123456789"


async def read_until_closed(stream: trio.SocketStream, within: float = 10.0) -> bytes:
    """Everything the other side sends until it closes the connection (which it must
    do within `within` seconds)."""
    received = bytearray()
    with trio.fail_after(within):
        with contextlib.suppress(trio.BrokenResourceError):
            while data := await stream.receive_some(65536):
                received += data
    return bytes(received)


def garbage() -> dict[str, bytes]:
    """What a confused or hostile client might send a mesh port first."""
    rng = random.Random(7)
    return {
        "random bytes": rng.randbytes(3000),
        "a length of 4 GiB": b"\xff\xff\xff\xff" + rng.randbytes(64),
        "a length just over the handshake limit": (4097).to_bytes(4, "big"),
        "a payload that is not msgpack": (64).to_bytes(4, "big") + b"\xc1" * 64,
        "msgpack that is not a map": encode_frame([1, 2, 3]),  # type: ignore[arg-type]
        "an unknown kind": encode_frame({"kind": "EVIL"}),
        "a request before the handshake": encode_frame({
            "kind": "REQ", "id": 1, "method": "home.register", "deadline_ms": 1000,
            "body": {"handle": "sneaky", "password": PASSWORD, "display_name": "S",
                     "client": "x"}}),
        "a HELLO of the wrong types": encode_frame({
            "kind": "HELLO", "version": "1", "shard": 3, "ring_signature": None,
            "boot_id": b"", "nonce": "short"}),
        "an HTTP request": b"GET / HTTP/1.1\r\nHost: chatd\r\n\r\n",
    }


async def test_garbage_on_a_mesh_port_harms_only_that_connection(cluster: Cluster) -> None:
    """Nine kinds of garbage sent to each shard's mesh port, all at once: each
    connection is dropped (with a warning), no link between shards goes down, and a
    message still crosses the cluster."""
    alice, bob = await cluster.people(["a", "b"])
    conversation = (await (await cluster.client("c", alice)).open_direct(bob.user_id))[
        "conversation_id"]
    links_before = {name: cluster[name].log().count("mesh link to") for name in NAMES}
    dropped: list[str] = []

    async def send(port: int, what: str, data: bytes) -> None:
        stream = await trio.open_tcp_stream(HOST, port)
        async with stream:
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(data)
            await read_until_closed(stream)
            dropped.append(what)

    async with trio.open_nursery() as nursery:
        for name in NAMES:
            for what, data in garbage().items():
                nursery.start_soon(send, cluster.mesh_ports[name], what, data)
    assert len(dropped) == 3 * len(garbage())

    for name in NAMES:
        log = cluster[name].log()
        assert "mesh: dropped a connection from 127.0.0.1" in log, log
        # Not one link went down or came up again.
        assert log.count("mesh link to") == links_before[name], log
    await cluster.wait_links(within=5)
    async with (await cluster.client("a", bob)).connect() as live:
        sent = await (await cluster.client("b", alice)).send(conversation, "still fine")
        [got] = await messages(live, 1)
        assert (got["seq"], got["body"]) == (sent["seq"], "still fine")


def forged_frames(shard: str, *, conversation: str, alice: Person, victim: Person,
                  handle: str) -> bytes:
    """What an impostor would have `shard` do: write into a conversation it owns as
    Alice, register a handle homed there, and hand Bob's session there a fake message
    (seq 3: the next one his session expects in that group)."""
    fake = [1, int(conversation), 3, int(alice.user_id), int(alice.device_id), "forged",
            "text/plain", "forged", 0]
    return b"".join([
        encode_frame({"kind": "REQ", "id": 1, "method": "owner.send", "deadline_ms": 5000,
                      "body": {"conversation_id": int(conversation),
                               "sender_id": int(alice.user_id),
                               "sender_device": int(alice.device_id),
                               "client_msg_id": "forged", "content_type": "text/plain",
                               "body": "forged"}}),
        encode_frame({"kind": "REQ", "id": 2, "method": "home.register", "deadline_ms": 5000,
                      "body": {"handle": handle, "password": PASSWORD,
                               "display_name": "Forged", "client": "impostor"}}),
        encode_frame({"kind": "POST", "method": "deliver_here",
                      "body": {"kind": "message", "data": fake,
                               "users": [int(victim.user_id)]}}),
    ])


async def drain(live: LiveConnection, quiet: float = 0.5) -> None:
    """Read until nothing has come for `quiet` seconds (a catch-up is over)."""
    while True:
        with trio.move_on_after(quiet) as timer:
            await live.next_event()
        if timer.cancelled_caught:
            return


async def no_forgery(live: LiveConnection, wait: float = 0.5) -> None:
    """Nothing the impostor made arrives within `wait` seconds (the rest of a slow
    catch-up may)."""
    with trio.move_on_after(wait):
        while True:
            event = await live.next_event()
            assert "forged" not in repr(event), event


async def hello_then(stream: trio.SocketStream, connection: MeshConnection,
                     then: Callable[[str], bytes]) -> str | None:
    """Our HELLO; the peer's HELLO; then, in one write, our PROOF (made with whatever
    secret `connection` has) and `then(peer)`. The peer's name, or None if it left."""
    await stream.send_all(connection.data_to_send())
    with trio.fail_after(5):
        while connection.peer is None:
            data = await stream.receive_some(65536)
            if not data:
                return None
            with contextlib.suppress(MeshProtocolError):  # its proof fails for us
                connection.receive_data(data)
    with contextlib.suppress(trio.BrokenResourceError):
        await stream.send_all(connection.data_to_send() + then(connection.peer))
    return connection.peer


async def test_an_impostor_without_the_secret_is_refused_and_nothing_it_sends_is_applied(
        cluster: Cluster) -> None:
    """c is killed and an impostor takes its mesh address: it knows the ring and the
    names, not the secret. a and b dial it and refuse it at its proof; it also dials b
    as `a`, and is refused the same way. The writes, registrations and deliveries it
    sends right behind its proof are never applied."""
    alice, bob = await cluster.people(["a", "b"])
    bob_second = await cluster.login(bob.handle, via="a", device="second")
    alice_a = await cluster.client("a", alice)
    owned: dict[str, str] = {}
    for _ in range(60):
        group = (await alice_a.create_group("g", [bob.user_id]))["conversation_id"]
        owned.setdefault(owner_of(group), group)
        if "a" in owned and "b" in owned:
            break
    else:
        raise AssertionError(f"no groups owned by a and b: {owned}")
    for group in owned.values():
        await alice_a.send(group, "real")
    handles = {shard: handle_homed_at(shard, prefix="forged") for shard in ("a", "b")}

    def forged(shard: str) -> bytes:
        return forged_frames(shard, conversation=owned[shard], alice=alice, victim=bob,
                             handle=handles[shard])

    dialed_by: list[str] = []
    replies: list[bytes] = []

    async def pose_as_c(stream: trio.SocketStream) -> None:
        connection = MeshConnection(Role.ACCEPTOR, shard="c", secret=WRONG_SECRET,
                                    ring_signature=RING.signature(), boot_id="impostor",
                                    peers=["a", "b"])
        peer = await hello_then(stream, connection, forged)
        if peer is not None:
            dialed_by.append(peer)
            replies.append(await read_until_closed(stream))

    # Bob's sessions on a (device two) and b (device one): where the fake deliveries go.
    async with (await cluster.client("b", bob)).connect() as bob_on_b, \
            (await cluster.client("a", bob_second)).connect() as bob_on_a:
        for live in (bob_on_a, bob_on_b):
            await drain(live)
        cluster["c"].kill()
        await cluster.wait_links({"a": {"c": False}, "b": {"c": False}})
        async with trio.open_nursery() as nursery:
            listeners = await trio.open_tcp_listeners(cluster.mesh_ports["c"], host=HOST)
            nursery.start_soon(trio.serve_listeners, pose_as_c, listeners)
            stream = await trio.open_tcp_stream(HOST, cluster.mesh_ports["b"])
            async with stream:
                connection = MeshConnection(Role.DIALER, shard="a", secret=WRONG_SECRET,
                                            ring_signature=RING.signature(),
                                            boot_id="impostor", peers=["b"], peer="b")
                assert await hello_then(stream, connection, forged) == "b"
                await read_until_closed(stream)
            proof = "bad proof (it does not know the cluster secret)"
            for name, text in (("a", f"peer c: {proof}"), ("b", f"peer c: {proof}"),
                               ("b", f"peer a: {proof}")):
                await logged(cluster[name], text)
            await eventually(lambda: {"a", "b"} <= set(dialed_by), within=15,
                             what="a and b to dial the impostor")
            for live in (bob_on_a, bob_on_b):
                await no_forgery(live)
            nursery.cancel_scope.cancel()

    assert replies and all(b"bad proof" in reply for reply in replies), replies
    # The link between the real a and b never wavered.
    assert "mesh link to b is down" not in cluster["a"].log()
    assert "mesh link to a is down" not in cluster["b"].log()
    cluster["c"].start()
    await cluster.wait_ready()
    for shard, group in owned.items():
        bodies = [m["body"] for m in await history(alice_a, group)]
        assert bodies[1:] == ["real"], (shard, bodies)
    for shard in NAMES:
        client = await cluster.client(shard, alice)
        for handle in handles.values():
            with pytest.raises(ApiError) as raised:
                await client.find_user(handle)
            assert raised.value.code == "unknown_user"


async def test_a_ping_or_request_read_with_a_bye_is_not_a_crash(cluster: Cluster) -> None:
    """A peer (here one that knows the secret, standing in for a killed a) sends a PING,
    or a request, and its BYE in one write: b closes the link as the peer asked, with
    no error logged."""
    bob = await cluster.person(home="b")
    cluster["a"].kill()
    await cluster.wait_links({"b": {"a": False}, "c": {"a": False}})
    for n, last_words in enumerate((
            encode_frame({"kind": "PING"}),
            encode_frame({"kind": "REQ", "id": 1, "method": "home.user", "deadline_ms": 1000,
                          "body": {"user_id": int(bob.user_id)}}))):
        stream = await trio.open_tcp_stream(HOST, cluster.mesh_ports["b"])
        async with stream:
            connection = MeshConnection(Role.DIALER, shard="a", secret=SECRET.encode(),
                                        ring_signature=RING.signature(),
                                        boot_id=os.urandom(4).hex(), peers=["b"], peer="b")
            with trio.fail_after(10):
                await handshake(stream, connection)
            await stream.send_all(last_words + encode_frame({"kind": "BYE",
                                                             "reason": "going away"}))
            await read_until_closed(stream)
        # The real a's link went down once; each of these goes down after it.
        await logged(cluster["b"], "mesh link to a is down", times=2 + n)
    log = cluster["b"].log()
    assert log.count("mesh link to a is down: the peer said bye: 'going away'") == 2, log
    assert "Traceback" not in log, log
    async with ChatClient(cluster["b"].url, token=bob.token) as client:
        assert (await client.request("GET", "/me"))["user_id"] == bob.user_id
