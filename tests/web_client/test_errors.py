"""What the app shows when things go wrong: the server going away and coming back, and a
rate limit refusing sends. Each test has a server of its own (they stop or limit it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from tests.helpers import free_port
from tests.web_client.harness import Browsers, ChatdProcess, befriend


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[list[ChatdProcess]]:
    made: list[ChatdProcess] = []
    yield made
    for process in made:
        process.stop()


def test_server_restart_reconnects_and_catches_up(browser: Browser, tmp_path: Path,
                                                  own_server: list[ChatdProcess]) -> None:
    listen = f"127.0.0.1:{free_port()}"
    own_server.append(ChatdProcess(tmp_path / "data", tmp_path / "a.log", listen=listen))
    people = Browsers(browser, own_server[0].url + "/")
    try:
        alice = people.register("Alice")
        bob = people.register("Bob")
        befriend(alice, bob)
        own_server[0].stop()
        for user in (alice, bob):
            expect(user.page.get_by_role("status").filter(
                has_text="Reconnecting")).to_be_visible()
        alice.send("written while the server was down")
        pending = alice.log().get_by_role("listitem").filter(has_text="while the server")
        expect(pending.get_by_role("img", name="Pending")).to_be_visible()
        own_server.append(ChatdProcess(tmp_path / "data", tmp_path / "b.log", listen=listen))
        # Backoff is at most 30 s; "Retry now" skips the wait.
        for user in (alice, bob):
            user.page.get_by_role("status").get_by_role("button", name="Retry now").click()
        expect(bob.log().get_by_text("written while the server was down")).to_have_count(1)
        expect(pending.get_by_role("img", name="Read")).to_be_visible()
        for user in (alice, bob):
            expect(user.page.get_by_role("status").filter(has_text="Reconnecting")).to_have_count(0)
    finally:
        people.close()
    assert not people.errors, people.errors


def test_rate_limit_is_shown_and_the_send_retried(browser: Browser, tmp_path: Path,
                                                  own_server: list[ChatdProcess]) -> None:
    own_server.append(ChatdProcess(tmp_path / "data", tmp_path / "a.log", extra_env={
        "CHATD_RATELIMITS_MESSAGES_PER_ACCOUNT": "1/2s burst 3"}))
    people = Browsers(browser, own_server[0].url + "/")
    try:
        alice = people.register("Alice")
        bob = people.register("Bob")
        befriend(alice, bob)
        for n in range(4):
            alice.send(f"burst {n}")
        expect(alice.page.get_by_role("alert")).to_contain_text("Rate limited")
        # Nothing is lost: the refused send goes out once the bucket refills.
        for n in range(4):
            expect(bob.log().get_by_text(f"burst {n}")).to_have_count(1, timeout=15_000)
    finally:
        people.close()
    assert not people.errors, people.errors
