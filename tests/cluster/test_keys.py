"""The key directory across shards: keys live on each user's home, and clients on other
shards upload, query and claim them over the mesh; `keys_low` and `device_list` reach
sockets on other shards; a stale device list is refused wherever the sender is."""

from __future__ import annotations

from typing import Any

import trio

from chatd.client import ApiError
from tests.cluster.harness import Cluster, home_of_user, next_of, nothing_more
from tests.e2e_devices import KeyDevice, signed_by


async def test_keys_homed_on_one_shard_claimed_from_another(cluster: Cluster) -> None:
    alice = await cluster.person(home="a")
    bob = await cluster.person(home="b")
    carol = await cluster.person(home="c")
    assert home_of_user(alice.user_id) == "a"
    # Alice uploads through c: the keys go to a, her home.
    device = KeyDevice()
    body = device.upload(one_time=6, fallback=True)
    alice_on_c = await cluster.client("c", alice)
    count = await alice_on_c.upload_keys(body["identity"], body["one_time_keys"],
                                         body["fallback_key"])
    assert count == 6
    # Querying from b and c gives the same answer.
    for shard in ("b", "c"):
        [found] = await (await cluster.client(shard, bob)).query_keys([alice.user_id])
        assert found == {"user_id": alice.user_id, "version": 1, "devices": [
            {"device_id": alice.device_id, **device.identity(),
             "sealed_key": None}]}
    # Many claimers on b and c at once, for her 6 one-time keys: each handed out once.
    results: list[dict[str, Any]] = []

    async def claim_via(shard: str, claimer: Any) -> None:
        client = await cluster.client(shard, claimer)
        answer = await client.claim_keys([(alice.user_id, alice.device_id)])
        results.extend(answer["keys"])

    async with trio.open_nursery() as nursery:
        for index in range(12):
            nursery.start_soon(claim_via, "bc"[index % 2], (bob, carol)[index % 2])
    one_time = [key for key in results if not key["fallback"]]
    assert len(results) == 12
    assert sorted(key["key_id"] for key in one_time) == sorted(body["one_time_keys"])
    assert {key["key_id"] for key in results if key["fallback"]} == set(body["fallback_key"])
    for key in results:
        assert signed_by(device.ed25519, key["key"], key["signature"])
    # A device that is not hers, and one that does not exist: missing, from any shard.
    answer = await (await cluster.client("b", bob)).claim_keys(
        [(alice.user_id, carol.device_id), (carol.user_id, carol.device_id)])
    assert answer == {"keys": [], "missing": [
        {"user_id": alice.user_id, "device_id": carol.device_id},
        {"user_id": carol.user_id, "device_id": carol.device_id}]}
    # Another identity for her device, through b: refused at her home.
    try:
        await (await cluster.client("b", alice)).upload_keys(KeyDevice().identity())
    except ApiError as error:
        assert (error.status, error.code) == (409, "identity_changed")
    else:
        raise AssertionError("a changed identity was accepted")


async def test_events_and_stale_sends_across_shards(cluster: Cluster) -> None:
    alice = await cluster.person(home="a")
    bob = await cluster.person(home="b")
    conversation = (await (await cluster.client("c", bob)).open_direct(alice.user_id))[
        "conversation_id"]
    await (await cluster.client("b", alice)).accept_request(conversation)
    stranger = await cluster.person(home="c")
    alice_device = KeyDevice()
    # Alice's socket is on b, Bob's and the stranger's on c; Alice's home is a.
    async with (await cluster.client("b", alice)).connect() as alice_on_b, \
            (await cluster.client("c", bob)).connect() as bob_on_c, \
            (await cluster.client("c", stranger)).connect() as stranger_on_c:
        body = alice_device.upload(one_time=11, fallback=True)
        await (await cluster.client("c", alice)).upload_keys(
            body["identity"], body["one_time_keys"], body["fallback_key"])
        expected = {"type": "device_list", "user_id": alice.user_id, "version": 1}
        assert await next_of(bob_on_c, "device_list") == expected
        assert await next_of(alice_on_b, "device_list") == expected
        bob_client = await cluster.client("c", bob)
        versions = {alice.user_id: 1}
        sent = await bob_on_c.send(conversation, "fresh", device_list_version=versions)
        assert sent["type"] == "sent"
        # Two claims from c leave her 9 (under the threshold of 10): her socket on b hears.
        await bob_client.claim_keys([(alice.user_id, alice.device_id)])
        await bob_client.claim_keys([(alice.user_id, alice.device_id)])
        assert await next_of(alice_on_b, "keys_low") == {
            "type": "keys_low", "one_time_key_count": 9, "fallback_used": False}
        # Alice adds a phone (logged in through c, homed at a): her version moves.
        phone = await cluster.login(alice.handle, via="c", device="phone")
        await (await cluster.client("b", phone)).upload_keys(KeyDevice().identity())
        assert (await next_of(bob_on_c, "device_list"))["version"] == 2
        for sender in (bob_on_c.send, bob_client.send):  # WebSocket, then REST
            try:
                await sender(conversation, "stale", device_list_version=versions)
            except ApiError as error:
                assert (error.code, error.details["users"]) == (
                    "device_list_stale", [alice.user_id])
            else:
                raise AssertionError("a stale device list was accepted")
        await bob_client.send(conversation, "current",
                              device_list_version={alice.user_id: 2})
        # The phone is revoked through b: version 3, its keys gone at a.
        await (await cluster.client("b", alice)).request(
            "DELETE", f"/devices/{phone.device_id}")
        assert (await next_of(bob_on_c, "device_list"))["version"] == 3
        [found] = await bob_client.query_keys([alice.user_id])
        assert found["version"] == 3
        assert [item["device_id"] for item in found["devices"]] == [alice.device_id]
        await nothing_more(stranger_on_c, "device_list")
