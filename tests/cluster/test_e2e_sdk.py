"""The E2E SDK across shards: three users homed on a, b and c, each connected to another
shard, talk in an encrypted group and an encrypted direct chat. Keys are claimed from
homes over the mesh, room keys travel through to-device queues on other shards, and each
reads the others' messages."""

from __future__ import annotations

from pathlib import Path

from chatd.client import ChatClient, Credentials
from chatd.e2e.client import E2EClient
from tests.cluster.harness import Cluster, Person
from tests.e2e.crypto_helpers import CHEAP
from tests.e2e.sdk_helpers import SdkUser, next_decrypted


async def sdk_on(cluster: Cluster, shard: str, person: Person, tmp: Path) -> SdkUser:
    client: ChatClient = await cluster.client(shard, person)
    client.credentials = Credentials(person.token, person.user_id, person.device_id, 0)
    state = tmp / f"state-{person.handle}"
    e2e = await E2EClient.open(client, state, "cluster pass phrase", **CHEAP)
    return SdkUser(client, e2e, person.handle, state)


async def test_an_encrypted_group_and_direct_chat_across_three_shards(
        cluster: Cluster, tmp_path: Path) -> None:
    alice_p, bob_p, carol_p = await cluster.people(["a", "b", "c"])
    # Each connects through a shard that is not their home.
    alice = await sdk_on(cluster, "b", alice_p, tmp_path)
    bob = await sdk_on(cluster, "c", bob_p, tmp_path)
    carol = await sdk_on(cluster, "a", carol_p, tmp_path)
    group = (await alice.chat.create_group("g", [bob.user_id, carol.user_id],
                                           encrypted=True))["conversation_id"]
    direct = (await bob.chat.open_direct(carol.user_id, encrypted=True))["conversation_id"]
    await carol.chat.accept_request(direct)
    async with alice.chat.connect() as alice_live, bob.chat.connect() as bob_live, \
            carol.chat.connect() as carol_live:
        await alice.e2e.send(group, {"text": "hello from a"}, live=alice_live)
        assert (await next_decrypted(bob, bob_live)).content == {"text": "hello from a"}
        assert (await next_decrypted(carol, carol_live)).content == {"text": "hello from a"}
        await carol.e2e.send(group, {"text": "hello from c"}, live=carol_live)
        assert (await next_decrypted(alice, alice_live)).content == {"text": "hello from c"}
        assert (await next_decrypted(bob, bob_live)).content == {"text": "hello from c"}
        await bob.e2e.send(direct, {"text": "just us"}, live=bob_live)
        assert (await next_decrypted(carol, carol_live)).content == {"text": "just us"}
        await carol.e2e.send(direct, {"text": "just us, back"}, live=carol_live)
        assert (await next_decrypted(bob, bob_live)).content == {"text": "just us, back"}
