"""Email notifications in a cluster: the settings, the links and the digest all belong to
the user's home, reached from another shard over the mesh (two shards in this process,
a real mesh, a real SMTP server)."""

from __future__ import annotations

import httpx
import trio

from chatd.config import Address, ShardSpec
from tests.conftest import ServerFactory
from tests.helpers import ManualClock, free_port, fresh_handle, new_account
from tests.services.test_email_notify import DELAY_S, email_section, link_token, recorded
from tests.smtp_sink import smtp_sink


async def test_settings_links_and_digests_are_the_homes(start_server: ServerFactory) -> None:
    ports = {"a": free_port(), "b": free_port()}
    shards = tuple(ShardSpec(name, number, Address("127.0.0.1", ports[name]))
                   for number, name in enumerate(("a", "b")))
    settings = {"shards": shards, "secret": "s" * 32, "request_timeout": 5.0}
    clock = ManualClock()
    with smtp_sink() as sink:
        servers = {name: await start_server(clock=clock, email=email_section(sink),
                                            cluster={**settings, "shard": name})
                   for name in ("a", "b")}
        a, b = servers["a"].services, servers["b"].services
        with trio.fail_after(15):
            while not (a.router.peers and a.router.peers.is_up("b")):  # noqa: ASYNC110
                await trio.sleep(0.05)  # (the mesh offers no event for a link coming up)
        async with httpx.AsyncClient(base_url=servers["a"].url, timeout=30) as http:
            # Alice is homed at b, and uses shard a for everything.
            while True:
                alice = await new_account(http, fresh_handle("alice"))
                if a.router.home_of_user(int(alice.user_id)) == "b":
                    break
            bob = await new_account(http)
            answer = await alice.patch("/me/notifications", {"email": "alice@example.com",
                                                             "email_enabled": True})
            assert answer.status_code == 200, answer.text
            [verification] = await sink.wait_for(1)
            assert b.email.settings_of(int(alice.user_id)).pending == "alice@example.com"
            assert a.email.settings_of(int(alice.user_id)).pending == ""  # only at home
            verified = await http.get("/email/verify",
                                      params={"token": link_token(verification, "verify")})
            assert verified.status_code == 200, verified.text
            shown = (await alice.get("/me/notifications")).json()
            assert shown["email"] == "alice@example.com" and shown["email_enabled"]

            direct = await bob.direct_with(alice)
            for number in range(3):
                assert (await bob.send(direct, f"m{number}")).status_code == 201
            clock.now += (DELAY_S + 1) * 1000
            [_, digest] = await sink.wait_for(2)
            assert "3 unread messages" in digest.part("plain")
            await recorded(b.email, "sent", 1)
            assert a.email.counts["sent"] == 0

            header = digest.message["List-Unsubscribe"]
            token = header.split("token=", 1)[1].rstrip(">")
            gone = await http.post("/email/unsubscribe", params={"token": token})
            assert gone.status_code == 200, gone.text
            assert b.email.settings_of(int(alice.user_id)).enabled is False
