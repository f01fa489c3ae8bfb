"""Two people chatting in two browsers against a real server (issue 15's test list)."""

from __future__ import annotations

import time

import httpx
from playwright.sync_api import expect

from tests.web_client.harness import Browsers, befriend


def test_register_login_chat_live_both_ways(people: Browsers) -> None:
    alice = people.register("Alice")
    bob = people.register("Bob")
    alice.start_chat(bob.handle, "Bob")
    alice.send("Hello Bob!")
    expect(alice.log().get_by_text("Hello Bob!")).to_be_visible()
    # Bob has never talked to Alice: her first message is a message request.
    requests = bob.page.get_by_role("list", name="Message requests")
    requests.get_by_role("button", name="Alice").click()
    expect(bob.log().get_by_text("Hello Bob!")).to_be_visible()
    bob.page.get_by_role("button", name="Accept").click()
    bob.send("Hi Alice, line one\nline two")
    expect(alice.log().get_by_text("Hi Alice, line one")).to_be_visible()
    # Shift+Enter adds a line; Enter sends.
    box = alice.page.get_by_role("textbox", name="Message")
    box.press_sequentially("first")
    box.press("Shift+Enter")
    box.press_sequentially("second")
    expect(box).to_have_value("first\nsecond")
    box.press("Enter")
    expect(box).to_have_value("")
    expect(bob.log().get_by_text("first\nsecond")).to_be_visible()
    # The list shows the last message and its time.
    expect(bob.page.get_by_role("navigation", name="Chat list").get_by_role(
        "button", name="Alice")).to_contain_text("second")

    # Logging out and in again (on a new device) shows the history.
    alice.page.get_by_role("button", name="Settings").click()
    alice.page.get_by_role("button", name="Log out", exact=True).click()
    expect(alice.page.get_by_role("button", name="Log in")).to_be_visible()
    alice.page.get_by_label("Username or phone").fill(alice.handle)
    alice.page.get_by_label("Password").fill("correct horse battery")
    alice.page.get_by_role("button", name="Log in").click()
    alice.open_chat("Bob")
    expect(alice.log().get_by_text("Hi Alice, line one")).to_be_visible()


def test_ticks_reach_read(people: Browsers) -> None:
    alice = people.register("Alice")
    bob = people.register("Bob")
    befriend(alice, bob)
    bob.page.keyboard.press("Escape")  # Esc closes the chat: Bob is on his list
    alice.send("Are you there?")
    message = alice.log().get_by_role("listitem").filter(has_text="Are you there?")
    expect(message.get_by_role("img", name="Delivered")).to_be_visible()
    expect(bob.page.get_by_role("button", name="Alice, 1 unread")).to_be_visible()
    bob.open_chat("Alice")
    expect(message.get_by_role("img", name="Read")).to_be_visible()
    expect(bob.page.get_by_role("button", name="Alice", exact=True)).to_be_visible()


def test_typing_is_seen_by_the_other_side(people: Browsers) -> None:
    alice = people.register("Alice")
    bob = people.register("Bob")
    befriend(alice, bob)
    header = alice.page.get_by_role("button", name="Chat info")
    expect(header).to_contain_text("online")
    bob.page.get_by_role("textbox", name="Message").press_sequentially("I am wri")
    expect(header).to_contain_text("typing…")
    expect(header).not_to_contain_text("typing…", timeout=10_000)


def test_reload_keeps_session_and_history(people: Browsers) -> None:
    alice = people.register("Alice")
    bob = people.register("Bob", remember=True)
    befriend(alice, bob)
    for n in range(3):
        bob.send(f"note {n}")
    expect(alice.log().get_by_text("note 2")).to_be_visible()
    for user in (alice, bob):
        user.page.reload()
        expect(user.page.get_by_role("heading", name="Chats")).to_be_visible()
        expect(user.title()).to_have_text("Bob" if user is alice else "Alice")
        for n in range(3):
            expect(user.log().get_by_text(f"note {n}")).to_have_count(1)
    # "Remember me" keeps Bob signed in in a new tab; Alice's session was this tab's only.
    again = bob.context.new_page()
    again.goto(people.url)
    expect(again.get_by_role("heading", name="Chats")).to_be_visible()
    again.close()
    fresh = alice.context.new_page()
    fresh.goto(people.url)
    expect(fresh.get_by_role("button", name="Log in")).to_be_visible()
    fresh.close()


def test_offline_then_online_catches_up(people: Browsers) -> None:
    alice = people.register("Alice")
    bob = people.register("Bob")
    befriend(alice, bob)
    bob.context.set_offline(True)
    expect(bob.page.get_by_role("status").filter(has_text="offline")).to_be_visible()
    for n in range(5):
        alice.send(f"while away {n}")
    # Bob writes while offline: shown as pending, sent once he is back.
    bob.send("sent from the tunnel")
    pending = bob.log().get_by_role("listitem").filter(has_text="sent from the tunnel")
    expect(pending.get_by_role("img", name="Pending")).to_be_visible()
    bob.context.set_offline(False)
    for n in range(5):
        expect(bob.log().get_by_text(f"while away {n}")).to_have_count(1)
    expect(alice.log().get_by_text("sent from the tunnel")).to_have_count(1)
    expect(pending.get_by_role("img", name="Read")).to_be_visible()
    # In order, no gap, no duplicate.
    texts = bob.log().get_by_role("paragraph").all_text_contents()
    away = [t for t in texts if "while away" in t]
    assert away == [f"while away {n}" for n in range(5)], texts
    expect(bob.page.get_by_role("status").filter(has_text="offline")).to_have_count(0)


def test_xss_payloads_render_as_text(people: Browsers) -> None:
    payload = '<img src=x onerror="window.__pwned=1">'
    alice = people.register(payload)
    bob = people.register("Bob")
    dialogs: list[str] = []
    for user in (alice, bob):
        user.page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    alice.start_chat(bob.handle, "Bob")
    script = "<script>alert(1)</script><b>bold</b> javascript:alert(2) https://ok.example/x?a=<b>"
    alice.send(script)
    requests = bob.page.get_by_role("list", name="Message requests")
    requests.get_by_role("button", name=payload).click()
    expect(bob.title()).to_have_text(payload)
    expect(bob.log().get_by_text(script)).to_be_visible()
    for user in (alice, bob):
        assert user.page.evaluate("window.__pwned") is None
        assert user.page.locator("img[src=x], script:not([src]), b").count() == 0
        # Only http(s) links are made clickable.
        links = user.log().get_by_role("link")
        expect(links).to_have_count(1)
        assert links.get_attribute("href") == "https://ok.example/x?a="
    assert dialogs == []


def test_encrypted_conversation_is_unreadable_and_never_sent_to(people: Browsers) -> None:
    """`encrypted: true` (the e2e-relay branch's field) is shown as such. The server here
    has no encrypted conversations yet, so the browser is told this one is: the answers
    of the real server, with that one field added."""
    alice = people.register("Alice")
    bob = people.register("Bob")
    befriend(alice, bob)
    bob.send("plain before")

    def mark_encrypted(route: object) -> None:
        response = route.fetch()  # type: ignore[attr-defined]
        body = response.json()
        for conv in body.get("conversations", [body]):
            if isinstance(conv, dict) and "conversation_id" in conv:
                conv["encrypted"] = True
        route.fulfill(response=response, json=body)  # type: ignore[attr-defined]

    sent: list[str] = []
    alice.page.on("websocket", lambda ws: ws.on(
        "framesent", lambda payload: sent.append(str(payload))))
    alice.page.route("**/conversations**", mark_encrypted)
    alice.page.reload()
    expect(alice.page.get_by_text("end-to-end encrypted").first).to_be_visible()
    box = alice.page.get_by_role("textbox", name="Message")
    expect(box).to_be_disabled()
    expect(alice.page.get_by_role("button", name="Send")).to_be_disabled()
    expect(alice.page.get_by_role("button", name="Attach a file")).to_be_disabled()
    expect(alice.log().get_by_text("Encrypted message").first).to_be_visible()
    expect(alice.log().get_by_text("plain before")).to_have_count(0)
    alice.page.keyboard.press("Enter")
    assert not [frame for frame in sent if '"send"' in frame]
    alice.page.unroute_all(behavior="ignoreErrors")


def test_history_pages_back_on_scroll_up(people: Browsers) -> None:
    alice = people.register("Alice")
    bob = people.register("Bob")
    befriend(alice, bob)
    conversation = alice.page.evaluate("location.hash").rsplit("/", 1)[1]
    with httpx.Client(base_url=people.url, timeout=30,
                      headers={"authorization": f"Bearer {bob.token()}"}) as http:
        for n in range(130):
            response = http.post("/messages/send", json={
                "conversation_id": conversation, "client_msg_id": f"h{n}",
                "content_type": "text/plain", "body": f"history {n:03d}"})
            assert response.status_code == 201, response.text
    alice.page.reload()
    expect(alice.log().get_by_text("history 129")).to_be_visible()
    expect(alice.log().get_by_text("history 000")).to_have_count(0)
    # Scroll up until the oldest message ("hi Bob", before the 130) is in: a page can end
    # right after "history 000", so seeing that one is not the end. Pages take longer on a
    # busy box, hence a deadline rather than a count of tries.
    deadline = time.monotonic() + 30
    while not alice.log().get_by_text("hi Bob").count() and time.monotonic() < deadline:
        alice.log().evaluate("log => { log.scrollTop = 0; }")
        alice.page.wait_for_timeout(250)
    expect(alice.log().get_by_text("hi Bob")).to_be_visible()
    texts = [t for t in alice.log().get_by_role("paragraph").all_text_contents()
             if "history" in t]
    assert texts == [f"history {n:03d}" for n in range(130)]
