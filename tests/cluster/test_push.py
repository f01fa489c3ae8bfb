"""Push notifications across shards: the subscription is kept, and the push decided and
sent, by the recipient's home, whichever shard the client asked and whichever owns the
conversation; a device live on another shard acknowledges through its home in time."""

from __future__ import annotations

import trio

from chatd.client import ChatClient
from tests.cluster.harness import Cluster, home_of_user, owner_of_direct
from tests.web.push_fakes import fake_push_server

#: push.grace_s (the default): a live device that does not ack is pushed after it.
GRACE_S = 5.0


async def test_the_home_pushes_offline_devices_only(cluster: Cluster,
                                                    nursery: trio.Nursery) -> None:
    alice = await cluster.person(home="a")
    bob_phone = await cluster.person(home="b", device="phone")
    bob_laptop = await cluster.login(bob_phone.handle, via="c", device="laptop")
    assert home_of_user(bob_phone.user_id) == "b"
    async with fake_push_server(nursery) as fake:
        # Subscribed through shards other than the home.
        for person, via, name in ((bob_phone, "c", "phone"), (bob_laptop, "a", "laptop")):
            client = await cluster.client(via, person)
            # The home's key, whichever shard is asked.
            fake.vapid_key = (await client.request("GET", "/push/vapid"))["public_key"]
            await client.request("POST", "/push/subscriptions",
                                 fake.subscription(name).body())
        home = await cluster.client("b", bob_phone)
        assert (await home.request("GET", "/push/vapid"))["public_key"] == fake.vapid_key
        writer = await cluster.client("a", alice)
        conversation = (await writer.open_direct(bob_phone.user_id))["conversation_id"]
        assert owner_of_direct(alice.user_id, bob_phone.user_id) in ("a", "b", "c")
        laptop_client: ChatClient = await cluster.client("c", bob_laptop)
        async with laptop_client.connect() as laptop:
            start = trio.current_time()
            sent = await writer.send(conversation, "across the mesh")
            with trio.fail_after(10):
                while True:
                    event = await laptop.next_event()
                    if event["type"] == "message" \
                            and event["message"]["seq"] == sent["seq"]:
                        await laptop.ack(conversation, sent["seq"])
                        break
            [push] = await fake.wait_for(1, "/push/phone")
            assert push.payload == {"conversation_id": conversation, "seq": sent["seq"],
                                    "unread": 1}
            assert push.at - start < GRACE_S
            # The laptop acknowledged on c; its home (b) heard of it and holds back.
            await trio.sleep(GRACE_S + 1.0)
            assert fake.accepted("/push/laptop") == []
        # Muted (asked through a, kept on b): nothing more for the phone either.
        muter = await cluster.client("a", bob_phone)
        await muter.request("PATCH", f"/conversations/{conversation}/notifications",
                            {"muted_until": 10**15})
        await trio.sleep(3.5)  # past push.coalesce_s
        await writer.send(conversation, "you will not hear of this")
        await trio.sleep(1.5)
        assert len(fake.accepted("/push/phone")) == 1
        assert not [item for item in fake.received if item.refused]
