"""Email notifications end to end: a real shard, real RocksDB, and a real SMTP server
(aiosmtpd's Controller on loopback). The clock is a test's (`ManualClock`), so "after
ten minutes" is a step of the clock, not a wait."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import trio

from chatd.server import RunningServer, serve
from chatd.services.email_notify import EmailNotifier
from chatd.storage import records
from tests.conftest import ServerFactory
from tests.helpers import PASSWORD, Account, ManualClock, login, make_config, new_account
from tests.smtp_sink import Received, SmtpSink, smtp_sink

BASE = "https://chat.example.org"
DELAY_S = 600


def email_section(sink: SmtpSink) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": sink.port, "security": "none",
            "from_address": "chatd <notify@chat.example.org>", "base_url": BASE,
            "check_interval": 0.02, "timeout": 2.0}


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with smtp_sink() as running:
        yield running


@asynccontextmanager
async def client(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        yield http


def link_token(mail: Received, route: str) -> str:
    """The token of the first `route` link in the mail's text part."""
    found = re.search(rf"{re.escape(BASE)}/email/{route}\?token=(\S+)", mail.part("plain"))
    assert found, mail.part("plain")
    return found.group(1)


async def subscribe(user: Account, sink: SmtpSink, address: str, **settings: Any) -> None:
    """Set an address, follow the verification link, turn digests on."""
    before = len(sink.mails)
    answer = await user.patch("/me/notifications", {"email": address, **settings})
    assert answer.status_code == 200, answer.text
    assert answer.json()["pending_email"] == address
    mails = await sink.wait_for(before + 1)
    verification = mails[before]
    assert verification.recipients == [address]
    verified = await user.http.get("/email/verify",
                                   params={"token": link_token(verification, "verify")})
    assert verified.status_code == 200, verified.text
    assert "text/html" in verified.headers["content-type"]
    enabled = await user.patch("/me/notifications", {"email_enabled": True})
    assert enabled.json()["email"] == address and enabled.json()["email_enabled"]


async def recorded(notifier: EmailNotifier, outcome: str, count: int) -> None:
    """The notifier has counted `count` of `outcome` (within 10 s)."""
    with trio.fail_after(10):
        while notifier.counts[outcome] < count:  # noqa: ASYNC110  # a counter, not an event
            await trio.sleep(0.01)


async def unread_counts(user: Account) -> dict[str, int]:
    answer = await user.get("/conversations")
    assert answer.status_code == 200, answer.text
    return {conv["conversation_id"]: conv["unread"] for conv in answer.json()["conversations"]}


async def no_mail_beyond(sink: SmtpSink, count: int) -> None:
    """The notifier looks every 20 ms: after many looks, still no new mail."""
    await trio.sleep(0.5)
    assert len(sink.mails) == count, [m.message["Subject"] for m in sink.mails]


async def test_digest_after_the_delay_only_if_still_unread(
        start_server: ServerFactory, sink: SmtpSink) -> None:
    clock = ManualClock()
    server = await start_server(clock=clock, email=email_section(sink))
    async with client(server) as http:
        alice, bob, carol = [await new_account(http, h) for h in ("alice_e1", "bob_e1",
                                                                  "carol_e1")]
        await subscribe(alice, sink, "alice@example.com")
        direct = await bob.direct_with(alice)
        group = await carol.group("Climbing", alice, bob)
        mails = len(sink.mails)
        for number in range(5):
            assert (await bob.send(direct, f"hello {number}")).status_code == 201
        for number in range(3):
            assert (await carol.send(group, f"rope {number}")).status_code == 201
        # Nine minutes on: not yet.
        clock.now += (DELAY_S - 60) * 1000
        await no_mail_beyond(sink, mails)
        clock.now += 61 * 1000
        [digest] = (await sink.wait_for(mails + 1))[mails:]
        await no_mail_beyond(sink, mails + 1)  # one digest for all eight messages
        assert digest.recipients == ["alice@example.com"]
        assert digest.message["Subject"] == "You have unread messages"
        text = digest.part("plain")
        # The counts are the app's own (the group's start is an entry too).
        unread = await unread_counts(alice)
        assert unread == {direct: 5, group: 4}
        assert "9 unread messages in 2 conversations" in text
        assert "Bob_E1 (chat): 5 unread" in text
        assert "Climbing (group): 4 unread" in text
        assert "hello" not in text  # previews are off unless the user allows them
        html = digest.part("html")
        assert "<strong>Climbing</strong>" in html

        # Read before the delay: no mail at all.
        for number in range(2):
            assert (await bob.send(direct, f"again {number}")).status_code == 201
        head = (await alice.get(f"/messages/{direct}")).json()["messages"][-1]["seq"]
        read = await alice.post(f"/conversations/{direct}/read", {"seq": head})
        assert read.status_code == 200, read.text
        # (Also read the group, which was mailed already: it must not come back.)
        clock.now += (DELAY_S + 1) * 1000
        await no_mail_beyond(sink, mails + 1)

        # A new message in the conversation already mailed comes in the next period.
        assert (await carol.send(group, "summit")).status_code == 201
        clock.now += (DELAY_S + 1) * 1000
        [second] = (await sink.wait_for(mails + 2))[mails + 1:]
        assert "Climbing (group): 5 unread" in second.part("plain")
        assert "Bob_E1" not in second.part("plain")


async def test_previews_when_allowed(start_server: ServerFactory, sink: SmtpSink) -> None:
    clock = ManualClock()
    server = await start_server(clock=clock, email=email_section(sink))
    async with client(server) as http:
        alice, bob = await new_account(http, "alice_e2"), await new_account(http, "bob_e2")
        await subscribe(alice, sink, "alice2@example.com")
        allowed = await alice.patch("/me/notifications/previews", {"previews": True})
        assert allowed.status_code == 200, allowed.text
        group = await bob.group("Team", alice)
        mails = len(sink.mails)
        assert (await bob.send(group, "first")).status_code == 201
        assert (await bob.send(group, "the newest one")).status_code == 201
        clock.now += (DELAY_S + 1) * 1000
        [digest] = (await sink.wait_for(mails + 1))[mails:]
        assert "Bob_E2: the newest one" in digest.part("plain")
        assert "Bob_E2: the newest one" in digest.part("html")


async def test_an_unverified_address_gets_only_its_verification_mail(
        start_server: ServerFactory, sink: SmtpSink) -> None:
    clock = ManualClock()
    server = await start_server(clock=clock, email=email_section(sink))
    async with client(server) as http:
        alice, bob = await new_account(http, "alice_e3"), await new_account(http, "bob_e3")
        # Anyone can have this mail sent to any address: it carries none of their words.
        lure = "Claim your refund at evil.example"
        assert (await alice.patch("/me", {"display_name": lure})).status_code == 200
        answer = await alice.patch("/me/notifications",
                                   {"email": "new@example.com", "email_enabled": True})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["email"] is None and body["pending_email"] == "new@example.com"
        assert body["email_enabled"] and body["email_available"]
        [verification] = await sink.wait_for(1)
        assert verification.message["Subject"] == "Confirm your email address"
        assert verification.recipients == ["new@example.com"]
        assert "evil.example" not in verification.part("plain")
        assert "evil.example" not in verification.part("html")
        token = link_token(verification, "verify")
        direct = await bob.direct_with(alice)
        assert (await bob.send(direct, "are you there")).status_code == 201
        clock.now += (DELAY_S + 1) * 1000
        await no_mail_beyond(sink, 1)  # not verified: no digest

        # Forged, malformed and other people's links do nothing.
        forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        assert (await http.get("/email/verify", params={"token": forged})).status_code == 404
        assert (await http.get("/email/verify", params={"token": "x"})).status_code == 400
        assert (await http.get("/email/verify")).status_code == 400
        _user, expires, signature = token.split(".")
        other = f"{bob.user_id}.{expires}.{signature}"
        assert (await http.get("/email/verify", params={"token": other})).status_code == 404
        assert (await alice.get("/me/notifications")).json()["email"] is None

        # Followed: from now on it gets digests (the next message starts a period).
        assert (await http.get("/email/verify", params={"token": token})).status_code == 200
        assert (await alice.get("/me/notifications")).json()["email"] == "new@example.com"
        assert (await bob.send(direct, "hello?")).status_code == 201
        clock.now += (DELAY_S + 1) * 1000
        [digest] = (await sink.wait_for(2))[1:]
        assert "2 unread messages" in digest.part("plain")

        # An expired link is refused: a new address, and 25 hours later.
        await alice.patch("/me/notifications", {"email": "later@example.com"})
        late = (await sink.wait_for(3))[2]
        clock.now += 25 * 3600 * 1000
        expired = await http.get("/email/verify", params={"token": link_token(late, "verify")})
        assert expired.status_code == 404
        assert expired.json()["error"]["code"] == "invalid_link"
        assert (await alice.get("/me/notifications")).json()["email"] == "new@example.com"


async def test_one_click_unsubscribe(start_server: ServerFactory, sink: SmtpSink) -> None:
    clock = ManualClock()
    server = await start_server(clock=clock, email=email_section(sink))
    async with client(server) as http:
        alice, bob = await new_account(http, "alice_e4"), await new_account(http, "bob_e4")
        await subscribe(alice, sink, "alice4@example.com")
        direct = await bob.direct_with(alice)
        assert (await bob.send(direct, "one")).status_code == 201
        clock.now += (DELAY_S + 1) * 1000
        [digest] = (await sink.wait_for(2))[1:]
        assert digest.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        header = digest.message["List-Unsubscribe"]
        assert header.startswith(f"<{BASE}/email/unsubscribe?token=") and header.endswith(">")
        url = urlsplit(header[1:-1])
        [token] = parse_qs(url.query)["token"]

        # The page asks; a GET (a link scanner) changes nothing.
        page = await http.get("/email/unsubscribe", params={"token": token})
        assert page.status_code == 200 and "<form method=\"post\"" in page.text
        assert (await alice.get("/me/notifications")).json()["email_enabled"] is True
        # What a mail client sends (RFC 8058): a POST with the form body, no login.
        assert (await http.post("/email/unsubscribe", params={"token": token},
                                content=b"List-Unsubscribe=One-Click",
                                headers={"content-type": "application/x-www-form-urlencoded"},
                                )).status_code == 200
        assert (await alice.get("/me/notifications")).json()["email_enabled"] is False
        # Twice is fine; a forged one is refused.
        assert (await http.post("/email/unsubscribe", params={"token": token})).status_code == 200
        forged = f"{bob.user_id}.{token.split('.', 1)[1]}"
        assert (await http.post("/email/unsubscribe", params={"token": forged})).status_code == 404

        assert (await bob.send(direct, "two")).status_code == 201
        clock.now += (DELAY_S + 1) * 1000
        await no_mail_beyond(sink, 2)


async def test_user_strings_cannot_inject_headers_or_html(
        start_server: ServerFactory, sink: SmtpSink) -> None:
    clock = ManualClock()
    server = await start_server(clock=clock, email=email_section(sink))
    async with client(server) as http:
        alice = await new_account(http, "alice_e5")
        hostile = "<img src=x onerror=alert(1)>Bcc: x@evil.example"
        registered = await http.post("/register", json={
            "handle": "mallory_e5", "password": PASSWORD, "display_name": hostile})
        assert registered.status_code == 201, registered.text
        mallory = await login(http, "mallory_e5")
        await subscribe(alice, sink, "alice5@example.com")
        assert (await alice.patch("/me/notifications/previews", {"previews": True})
                ).status_code == 200
        group = await mallory.group("Subject: won</strong><script>x()</script>", alice)
        direct = await mallory.direct_with(alice)
        body = "hi\r\nBcc: victim@evil.example\r\nSubject: pwned\r\n\r\n<b>bold</b>"
        assert (await mallory.send(group, body)).status_code == 201
        assert (await mallory.send(direct, body)).status_code == 201
        mails = len(sink.mails)
        clock.now += (DELAY_S + 1) * 1000
        [digest] = (await sink.wait_for(mails + 1))[mails:]
        # The envelope and the headers are ours alone.
        assert digest.recipients == ["alice5@example.com"]
        assert digest.message["Subject"] == "You have unread messages"
        assert digest.message.get_all("Bcc") is None
        assert sorted({name.lower() for name in digest.message}) == sorted({
            "subject", "from", "to", "date", "message-id", "auto-submitted",
            "list-unsubscribe", "list-unsubscribe-post", "mime-version", "content-type"})
        head = digest.raw.split(b"\r\n\r\n", 1)[0].decode()
        assert "\nList-Unsubscribe: <https://chat.example.org/email/unsubscribe?token=" \
            in head.replace("\r\n", "\n")
        assert "evil.example" not in head and "pwned" not in head
        html = digest.part("html")
        assert "<script>" not in html and "<img" not in html and "<b>bold" not in html
        assert "&lt;script&gt;x()&lt;/script&gt;" in html
        assert "&lt;img src=x onerror=alert(1)&gt;" in html
        assert "&lt;b&gt;bold&lt;/b&gt;" in html
        # In the text part the preview is one line: it cannot fake lines of its own.
        text = digest.part("plain")
        assert "\nBcc:" not in text and "\nSubject: pwned" not in text
        assert "hi Bcc: victim@evil.example Subject: pwned <b>bold</b>" in text


async def test_smtp_down_is_retried_later_without_blocking_anything(
        start_server: ServerFactory) -> None:
    clock = ManualClock()
    with smtp_sink(started=False) as sink:
        server = await start_server(clock=clock, email=email_section(sink),
                                    server={"admin_token": "adm1n"})
        notifier = server.services.email
        async with client(server) as http:
            alice, bob = await new_account(http, "alice_e6"), await new_account(http, "bob_e6")
            # The verification mail is lost while the server is down; the user asks
            # again (a minute later) once it is up.
            await alice.patch("/me/notifications", {"email": "alice6@example.com",
                                                    "email_enabled": True})
            await trio.sleep(0.3)
            sink.start()
            clock.now += 61_000
            await alice.patch("/me/notifications", {"email": "alice6@example.com"})
            [verification] = await sink.wait_for(1)
            token = link_token(verification, "verify")
            assert (await http.get("/email/verify", params={"token": token})).status_code == 200
            sink.stop()

            direct = await bob.direct_with(alice)
            assert (await bob.send(direct, "ping")).status_code == 201
            clock.now += (DELAY_S + 1) * 1000
            await recorded(notifier, "failed", 1)
            # Meanwhile everything else goes on, at its usual pace.
            with trio.fail_after(2):
                assert (await bob.send(direct, "still working")).status_code == 201
                assert (await alice.get(f"/messages/{direct}")).status_code == 200
            state = notifier.state_of(int(alice.user_id))
            assert state.failures == 1 and state.due_ms > clock.now

            sink.start()
            clock.now += 31_000  # the first retry comes 30 s later
            [_, digest] = await sink.wait_for(2)
            assert digest.recipients == ["alice6@example.com"]
            assert "2 unread messages" in digest.part("plain")
            # (The sink has the mail before smtplib's QUIT returns and the notifier
            # records it.)
            await recorded(notifier, "sent", 1)
            assert notifier.state_of(int(alice.user_id)).failures == 0
            metrics = await http.get("/metrics", headers={"Authorization": "Bearer adm1n"})
            assert 'chatd_email_total{outcome="failed"} 1' in metrics.text
            assert 'chatd_email_total{outcome="sent"} 1' in metrics.text


async def test_a_due_digest_survives_a_restart(tmp_path: Path, sink: SmtpSink) -> None:
    clock = ManualClock()
    config = make_config(tmp_path / "data", email=email_section(sink))

    @asynccontextmanager
    async def running() -> AsyncIterator[RunningServer]:
        shutdown = trio.Event()
        async with trio.open_nursery() as nursery:
            server: RunningServer = await nursery.start(
                partial(serve, config, shutdown=shutdown, clock=clock))
            yield server
            shutdown.set()

    async with running() as server, client(server) as http:
        alice, bob = await new_account(http, "alice_e7"), await new_account(http, "bob_e7")
        await subscribe(alice, sink, "alice7@example.com")
        direct = await bob.direct_with(alice)
        assert (await bob.send(direct, "before the restart")).status_code == 201
        await trio.sleep(0.2)  # the due time rides in a later batch
    clock.now += (DELAY_S + 1) * 1000
    async with running() as server:
        [_, digest] = await sink.wait_for(2)
        assert "Bob_E7 (chat): 1 unread" in digest.part("plain")


async def test_settings_routes_refuse_what_they_should(
        start_server: ServerFactory, sink: SmtpSink) -> None:
    server = await start_server(email=email_section(sink))
    async with client(server) as http:
        alice = await new_account(http, "alice_e8")
        defaults = (await alice.get("/me/notifications")).json()
        assert defaults == {"email": None, "pending_email": None, "email_enabled": False,
                            "email_delay_s": 600, "email_available": True}
        assert (await http.get("/me/notifications")).status_code == 401
        for bad in ({"email": "no-at-sign"}, {"email": "a@b"}, {"email": "a\r\nBcc: x@y.z"},
                    {"email": "ü@example.com"}, {"email": 5}, {"email_delay_s": 5},
                    {"email_delay_s": "600"}, {"email_enabled": "yes"}, {"unknown": 1}):
            answer = await alice.patch("/me/notifications", bad)
            assert answer.status_code == 400, (bad, answer.text)
        assert (await alice.patch("/me/notifications", {"email_delay_s": 120})
                ).json()["email_delay_s"] == 120
        removed = await alice.patch("/me/notifications", {"email": ""})
        assert removed.status_code == 200 and removed.json()["pending_email"] is None


async def test_no_smtp_server_configured(start_server: ServerFactory) -> None:
    server = await start_server()
    async with client(server) as http:
        alice = await new_account(http, "alice_e9")
        assert (await alice.get("/me/notifications")).json()["email_available"] is False
        answer = await alice.patch("/me/notifications", {"email": "a@example.com"})
        assert answer.status_code == 409
        assert answer.json()["error"]["code"] == "email_unavailable"


async def test_erasing_the_account_forgets_the_address(
        start_server: ServerFactory, sink: SmtpSink) -> None:
    clock = ManualClock()
    server = await start_server(clock=clock, email=email_section(sink))
    async with client(server) as http:
        alice, bob = await new_account(http, "alice_e10"), await new_account(http, "bob_e10")
        await subscribe(alice, sink, "alice10@example.com")
        direct = await bob.direct_with(alice)
        assert (await bob.send(direct, "one")).status_code == 201
        user_id = int(alice.user_id)
        assert server.services.email.state_of(user_id).due_ms
        erased = await alice.http.request("DELETE", "/me", headers=alice.headers,
                                          json={"password": PASSWORD, "erase": True})
        assert erased.status_code == 200, erased.text
        store = server.services.store
        assert store.get(records.EMAIL_SETTINGS, user_id) is None
        assert store.get(records.EMAIL_DIGESTS, user_id) is None
        clock.now += (DELAY_S + 1) * 1000
        await no_mail_beyond(sink, 1)


async def test_muted_conversations_are_skipped_but_mentions_are_mailed(
        start_server: ServerFactory, sink: SmtpSink) -> None:
    clock = ManualClock()
    server = await start_server(clock=clock, email=email_section(sink))
    async with client(server) as http:
        alice, bob = await new_account(http, "alice_e11"), await new_account(http, "bob_e11")
        await subscribe(alice, sink, "alice11@example.com")
        noisy = await bob.group("Noisy", alice)
        quiet = await bob.direct_with(alice)
        until = clock.now + 24 * 3600 * 1000
        for conversation in (noisy, quiet):
            muted = await alice.patch(f"/conversations/{conversation}/notifications",
                                      {"muted_until": until})
            assert muted.status_code == 200, muted.text
        assert (await bob.send(noisy, "chatter")).status_code == 201
        assert (await bob.send(quiet, "more chatter")).status_code == 201
        clock.now += (DELAY_S + 1) * 1000
        await no_mail_beyond(sink, 1)  # both muted: nothing
        assert (await bob.send(noisy, "@alice_e11 look")).status_code == 201
        clock.now += (DELAY_S + 1) * 1000
        [digest] = (await sink.wait_for(2))[1:]
        text = digest.part("plain")
        assert "Noisy (group)" in text and "Bob_E11" not in text


async def test_verification_mails_are_resent_at_most_once_a_minute_per_address(
        start_server: ServerFactory, sink: SmtpSink) -> None:
    clock = ManualClock()
    server = await start_server(clock=clock, email=email_section(sink))
    async with client(server) as http:
        alice = await new_account(http, "alice_e12")
        await alice.patch("/me/notifications", {"email": "typo@exmaple.com"})
        await sink.wait_for(1)
        await alice.patch("/me/notifications", {"email": "typo@exmaple.com"})
        await no_mail_beyond(sink, 1)  # the same address within a minute: not again
        await alice.patch("/me/notifications", {"email": "fixed@example.com"})
        [_, fixed] = await sink.wait_for(2)  # another address: at once
        assert fixed.recipients == ["fixed@example.com"]
        clock.now += 61_000
        await alice.patch("/me/notifications", {"email": "fixed@example.com"})
        [*_, again] = await sink.wait_for(3)
        assert again.recipients == ["fixed@example.com"]
        # The typo's link no longer does anything: it is not the pending address.
        typo = sink.mails[0]
        refused = await http.get("/email/verify", params={"token": link_token(typo, "verify")})
        assert refused.status_code == 404
