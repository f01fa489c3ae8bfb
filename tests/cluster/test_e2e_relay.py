"""The end-to-end relay across shards (issue 14): to-device messages queued on the
target's home and delivered to sockets on other shards, exactly once across a
disconnect and a move to another shard; sealed sends whose stored row (read from the
stopped shard's RocksDB) names no sender; encrypted conversations owned elsewhere."""

from __future__ import annotations

import base64
from typing import Any

import trio

from chatd.client import ApiError, ChatClient, LiveConnection
from chatd.storage import Store, records
from tests.cluster.harness import Cluster, home_of_user, owner_of


async def to_device_frames(connection: LiveConnection, count: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    with trio.fail_after(10):
        while len(found) < count:
            event = await connection.next_event()
            if event["type"] == "to_device":
                found.append(event)
    return found


async def none_more(connection: LiveConnection, seconds: float = 0.5) -> None:
    with trio.move_on_after(seconds):
        while True:
            event = await connection.next_event()
            assert event["type"] != "to_device", event


def olm(n: int) -> dict[str, Any]:
    return {"type": "chatd.olm", "content": {"n": n}}


async def test_to_device_across_shards_exactly_once(cluster: Cluster) -> None:
    """Alice is homed on a and sends through a; Bob is homed on b, his phone connected
    to c, then to a; Carol is homed on c. One request reaches two homes."""
    alice = await cluster.person(home="a")
    bob = await cluster.person(home="b")
    carol = await cluster.person(home="c")
    bob_laptop = await cluster.login(bob.handle, via="a", device="laptop")
    assert (home_of_user(alice.user_id), home_of_user(bob.user_id),
            home_of_user(carol.user_id)) == ("a", "b", "c")
    sender = await cluster.client("a", alice)
    phone_on_c = await cluster.client("c", bob)
    async with phone_on_c.connect() as live:
        answer = await sender.send_to_device(
            {bob.user_id: {"*": olm(1)}, carol.user_id: {carol.device_id: olm(1)}},
            txn_id="t-1")
        assert answer == {"queued": 3}
        # A retry reaches both homes again and queues nothing.
        assert await sender.send_to_device(
            {bob.user_id: {"*": olm(1)}, carol.user_id: {carol.device_id: olm(1)}},
            txn_id="t-1") == {"queued": 3}
        [first] = await to_device_frames(live, 1)
        assert (first["id"], first["sender_user_id"], first["content"]) == (
            1, alice.user_id, {"n": 1})
        await none_more(live)
    # Disconnected, nothing acknowledged; two more wait on b.
    for n in (2, 3):
        await sender.send_to_device({bob.user_id: {bob.device_id: olm(n)}})
    # The same client reconnects through another shard: only what it has not seen.
    phone_on_a = ChatClient(cluster["a"].url, token=bob.token)
    phone_on_a.to_device_seen = phone_on_c.to_device_seen
    async with phone_on_a, phone_on_a.connect() as live:
        got = await to_device_frames(live, 2)
        assert [(frame["id"], frame["content"]["n"]) for frame in got] == [(2, 2), (3, 3)]
        await none_more(live)
        # Live again, now through a (home b relays to a).
        await sender.send_to_device({bob.user_id: {bob.device_id: olm(4)}})
        [live_one] = await to_device_frames(live, 1)
        assert (live_one["id"], live_one["content"]["n"]) == (4, 4)
        await live.ack_to_device(3)
    # A client that remembers nothing gets exactly what was not acknowledged, in order.
    fresh = await cluster.client("c", bob)
    async with fresh.connect() as live:
        got = await to_device_frames(live, 1)
        assert [frame["id"] for frame in got] == [4]
        await none_more(live)
        await live.ack_to_device(4)
    laptop = await cluster.client("b", bob_laptop)
    async with laptop.connect() as live:
        [only] = await to_device_frames(live, 1)
        assert (only["id"], only["content"]["n"]) == (1, 1)
    carol_client = await cluster.client("b", carol)
    async with carol_client.connect() as live:
        [only] = await to_device_frames(live, 1)
        assert (only["id"], only["sender_device_id"]) == (1, alice.device_id)


async def test_sealed_send_across_shards_stores_no_sender(cluster: Cluster) -> None:
    alice = await cluster.person(home="a")
    bob = await cluster.person(home="b")
    access_key = bytes(range(16, 32))
    bob_client = await cluster.client("c", bob)
    await bob_client.set_access_key(access_key)
    # Every shard has its own key, and every shard publishes all three.
    listed = [await (await cluster.client(name)).server_keys() for name in ("a", "b", "c")]
    assert listed[0] == listed[1] == listed[2] and len(listed[0]) == 3
    envelope = b"sealed box bytes from alice " + alice.user_id.encode()
    async with bob_client.connect() as live:
        anonymous = await cluster.client("a")  # through Alice's shard, with no token
        try:
            await anonymous.sealed_send(bob.user_id, bob.device_id, envelope, b"x" * 16)
            raise AssertionError("a wrong access key was taken")
        except ApiError as refused:
            assert refused.status == 401
        await anonymous.sealed_send(bob.user_id, bob.device_id, envelope, access_key)
        [frame] = await to_device_frames(live, 1)
        assert frame == {"type": "to_device", "id": 1, "message_type": "sealed",
                         "content": {"envelope": base64.b64encode(envelope).decode()}}
    # Bob's home's database, read after the shard stopped (SIGTERM, exit 0).
    assert await cluster["b"].terminate() == 0
    store = Store.open_read_only(str(cluster["b"].data_dir))
    try:
        rows = store.scan(records.TO_DEVICE, records.u64(int(bob.user_id)))
        assert [value[:3] for _, value in rows] == [[0, 0, "sealed"]]
        assert store.scan(records.TO_DEVICE_TXNS, b"") == []
        sender_bytes = int(alice.user_id).to_bytes(8, "big")
        assert all(sender_bytes not in key and sender_bytes not in records.pack(value)
                   for key, value in rows)
    finally:
        store.close()
    cluster["b"].start()
    await cluster.wait_ready()


async def test_encrypted_conversation_owned_elsewhere(cluster: Cluster) -> None:
    alice = await cluster.person(home="a")
    bob = await cluster.person(home="b")
    alice_a = await cluster.client("a", alice)
    bob_c = await cluster.client("c", bob)
    direct = await alice_a.open_direct(bob.user_id, encrypted=True)
    conversation_id = direct["conversation_id"]
    assert direct["encrypted"] is True
    # Seen through another shard than its owner's, by the other member.
    assert owner_of(conversation_id) in ("a", "b", "c")
    view = await bob_c.request("GET", f"/conversations/{conversation_id}")
    assert view["encrypted"] is True
    # (A message request for Bob until he answers: listed apart, encrypted too.)
    requests = await bob_c.request("GET", "/conversations", params={"requests": 1})
    assert [conv["encrypted"] for conv in requests["conversations"]] == [True]
    try:
        await bob_c.send(conversation_id, "plaintext")
        raise AssertionError("plaintext was taken")
    except ApiError as refused:
        assert (refused.status, refused.code) == (400, "plaintext_refused")
    async with bob_c.connect() as live:
        sent = await live.send(conversation_id, b"\x00megolm",
                               content_type="application/vnd.chatd.megolm")
        assert sent["seq"] >= 1
