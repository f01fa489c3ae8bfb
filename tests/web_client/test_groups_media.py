"""Groups, media, the phone layout, the settings pages, and the README's screenshots."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

from PIL import Image
from playwright.sync_api import Page, expect

from tests.web_client.harness import PASSWORD, Browsers, User, befriend

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def _png(width: int = 800, height: int = 600) -> bytes:
    image = Image.new("RGB", (width, height), (30, 140, 200))
    for x in range(0, width, 40):
        for y in range(0, height, 40):
            if (x + y) // 40 % 2:
                image.paste((250, 200, 60), (x, y, x + 40, y + 40))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _attach(user: User, name: str, data: bytes, mime: str) -> None:
    user.page.get_by_label("Choose files").set_input_files(
        files=[{"name": name, "mimeType": mime, "buffer": data}])


def _no_horizontal_scroll(page: Page) -> None:
    overflow = page.evaluate("""() => {
        const wide = [];
        const limit = document.documentElement.clientWidth;
        if (document.documentElement.scrollWidth > limit) wide.push('document');
        for (const el of document.querySelectorAll('body *')) {
            const box = el.getBoundingClientRect();
            if (box.width && box.right > limit + 1 && getComputedStyle(el).position !== 'fixed'
                && !el.closest('.visually-hidden')) wide.push(el.className || el.tagName);
        }
        return wide;
    }""")
    assert overflow == [], overflow


def test_a_group_of_three(people: Browsers) -> None:
    alice = people.register("Alice")
    bob = people.register("Bob")
    carol = people.register("Carol")
    alice.page.get_by_role("button", name="New group").click()
    alice.page.get_by_label("Group name").fill("Weekend")
    alice.page.get_by_label("Members (usernames, separated by commas)").fill(
        f"{bob.handle}, {carol.handle}")
    alice.page.get_by_role("button", name="Create group").click()
    expect(alice.title()).to_have_text("Weekend")
    expect(alice.log().get_by_text("You created the group “Weekend”")).to_be_visible()
    alice.send("Who brings the tent?")
    for user in (bob, carol):
        user.open_chat("Weekend")
        expect(user.log().get_by_text("Alice created the group “Weekend”")).to_be_visible()
        expect(user.log().get_by_text("Who brings the tent?")).to_be_visible()
    bob.send("I do")
    carol.send("I bring food")
    for user in (alice, bob, carol):
        expect(user.log().get_by_text("I do")).to_be_visible()
        expect(user.log().get_by_text("I bring food")).to_be_visible()
    # The sender's name is shown above others' messages in a group.
    expect(alice.log().get_by_role("listitem").filter(has_text="I do")).to_contain_text("Bob")
    expect(alice.log().get_by_role("listitem").filter(
        has_text="Who brings the tent?").get_by_role("img", name="Read")).to_be_visible()

    # Admin things: rename, promote, remove; a member leaves.
    alice.page.get_by_role("button", name="Chat info").click()
    dialog = alice.page.get_by_role("dialog", name="Group info")
    dialog.get_by_label("Group name").fill("Weekend trip")
    dialog.get_by_role("button", name="Rename").click()
    dialog.get_by_role("button", name="Make Bob admin").click()
    expect(dialog.get_by_role("list", name="Members").get_by_role("listitem").filter(
        has_text="Bob")).to_contain_text("admin")
    dialog.get_by_role("button", name="Remove Carol").click()
    expect(dialog.get_by_role("button", name="Remove Carol")).to_have_count(0)
    dialog.press("Escape")
    expect(dialog).to_have_count(0)
    expect(bob.title()).to_have_text("Weekend trip")
    expect(bob.log().get_by_text("Alice renamed the group to “Weekend trip”")).to_be_visible()
    expect(bob.log().get_by_text("You are now admin")).to_be_visible()
    expect(alice.log().get_by_text("Bob is now admin")).to_be_visible()
    expect(bob.log().get_by_text("Alice removed Carol")).to_be_visible()
    expect(carol.page.get_by_role("navigation", name="Chat list").get_by_role(
        "button", name=re.compile("Weekend"))).to_have_count(0)
    bob.page.get_by_role("button", name="Chat info").click()
    bob.page.get_by_role("button", name="Leave group").click()
    expect(alice.log().get_by_text("Bob left")).to_be_visible()
    expect(bob.page.get_by_role("navigation", name="Chat list").get_by_role(
        "button", name=re.compile("Weekend"))).to_have_count(0)


def test_an_image_upload_shows_its_thumbnail(people: Browsers) -> None:
    alice = people.register("Alice")
    bob = people.register("Bob")
    befriend(alice, bob)
    alice.page.get_by_role("textbox", name="Message").fill("the beach")
    _attach(alice, "beach.png", _png(), "image/png")
    for user in (alice, bob):
        button = user.log().get_by_role("button", name="Open image beach.png")
        expect(button).to_be_visible()
        image = button.get_by_role("img", name="beach.png")
        expect(image).to_have_attribute("src", re.compile("^blob:"))
        user.page.wait_for_function(
            "img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
        assert image.evaluate("img => img.naturalWidth") == 320
    expect(bob.log().get_by_text("the beach")).to_be_visible()
    # The lightbox shows the full image; Esc closes it.
    bob.log().get_by_role("button", name="Open image beach.png").click()
    lightbox = bob.page.get_by_role("dialog", name="Image beach.png")
    full = lightbox.get_by_role("img", name="beach.png")
    expect(full).to_have_attribute("src", re.compile("^blob:"))
    bob.page.wait_for_function("img => img.naturalWidth === 800", arg=full.element_handle())
    bob.page.keyboard.press("Escape")
    expect(lightbox).to_have_count(0)
    # A document is a download link; the upload shows its progress meanwhile.
    _attach(alice, "notes.txt", b"plain notes\n" * 1000, "text/plain")
    link = bob.log().get_by_role("link", name="Download notes.txt")
    expect(link).to_have_attribute("href", re.compile(r"^/media/\d+\?u="))


def test_delete_block_report_and_privacy(people: Browsers) -> None:
    alice = people.register("Alice")
    bob = people.register("Bob")
    befriend(alice, bob)
    alice.send("oops, wrong chat")
    expect(bob.log().get_by_text("oops, wrong chat")).to_be_visible()
    alice.log().get_by_role("listitem").filter(has_text="oops, wrong chat").get_by_role(
        "button", name="Message actions").click()
    alice.page.get_by_role("button", name="Delete for everyone").click()
    for user in (alice, bob):
        expect(user.log().get_by_text("This message was deleted")).to_be_visible()
        expect(user.log().get_by_text("oops, wrong chat")).to_have_count(0)
    # The disappearing timer is a system entry both see.
    alice.page.get_by_role("button", name="Chat info").click()
    alice.page.get_by_label("Disappearing messages").select_option("86400")
    alice.page.keyboard.press("Escape")
    expect(alice.log().get_by_text("You set disappearing messages to 24 hours")).to_be_visible()
    expect(bob.log().get_by_text("Alice set disappearing messages to 24 hours")).to_be_visible()
    # Bob reports one of Alice's messages, then blocks her.
    alice.send("buy cheap pills")
    bob.log().get_by_role("listitem").filter(has_text="buy cheap pills").get_by_role(
        "button", name="Message actions").click()
    bob.page.get_by_role("button", name="Report").click()
    report = bob.page.get_by_role("dialog", name="Report message")
    report.get_by_label("Reason").select_option("spam")
    report.get_by_role("button", name="Send report").click()
    expect(report.get_by_role("status")).to_contain_text("report was sent")
    report.press("Escape")
    bob.page.get_by_role("button", name="Chat info").click()
    bob.page.get_by_role("button", name="Block Alice").click()
    expect(bob.page.get_by_role("button", name="Unblock Alice")).to_be_visible()
    bob.page.keyboard.press("Escape")
    expect(bob.page.get_by_role("textbox", name="Message")).to_be_disabled()
    # Alice's send is refused: shown as not sent, with the reason.
    alice.send("hello?")
    failed = alice.log().get_by_role("listitem").filter(has_text="hello?")
    expect(failed.get_by_role("img", name="Not sent")).to_be_visible()
    expect(failed).to_contain_text("Not sent")
    # Privacy settings are saved on the server.
    bob.page.get_by_role("button", name="Settings").click()
    settings = bob.page.get_by_role("dialog", name="Settings")
    settings.get_by_label("Who sees my last seen").select_option("nobody")
    settings.get_by_label("Send read receipts").uncheck()
    bob.page.wait_for_timeout(300)
    settings.press("Escape")
    bob.page.get_by_role("button", name="Settings").click()
    settings = bob.page.get_by_role("dialog", name="Settings")
    expect(settings.get_by_label("Who sees my last seen")).to_have_value("nobody")
    expect(settings.get_by_label("Send read receipts")).not_to_be_checked()


def test_devices_page_revokes_another_device(people: Browsers) -> None:
    alice = people.register("Alice")
    other = people.context().new_page()
    people.watch(other)
    other.goto(people.url)
    other.get_by_label("Username or phone").fill(alice.handle)
    other.get_by_label("Password").fill(PASSWORD)
    other.get_by_role("button", name="Log in").click()
    expect(other.get_by_role("heading", name="Chats")).to_be_visible()
    alice.page.get_by_role("button", name="Settings").click()
    devices = alice.page.get_by_role("list", name="Devices")
    expect(devices.get_by_role("listitem")).to_have_count(2)
    expect(devices).to_contain_text("this device")
    devices.get_by_role("button", name=re.compile("^Log out ")).click()
    expect(devices.get_by_role("listitem")).to_have_count(1)
    # The revoked browser is signed out, and says so.
    expect(other.get_by_role("button", name="Log in")).to_be_visible()
    expect(other.get_by_role("alert")).to_contain_text("logged out")


def test_the_phone_viewport_has_no_horizontal_scroll(people: Browsers) -> None:
    for width in (360, 390):
        alice = people.register("Alice", viewport={"width": width, "height": 760},
                                is_mobile=True, has_touch=True)
        _no_horizontal_scroll(alice.page)
        bob = people.register("Bob with a rather long display name for a phone")
        befriend(alice, bob)
        bob.send("https://example.com/" + "a" * 300)
        bob.send("x" * 500)
        expect(alice.log().get_by_text("x" * 500)).to_be_visible()
        # One pane at a time on a phone: the list is hidden while a chat is open.
        expect(alice.page.get_by_role("navigation", name="Chat list")).to_be_hidden()
        _no_horizontal_scroll(alice.page)
        alice.page.get_by_role("button", name="Chat info").click()
        _no_horizontal_scroll(alice.page)
        alice.page.keyboard.press("Escape")
        alice.page.get_by_role("button", name="Back to chats").click()
        expect(alice.page.get_by_role("navigation", name="Chat list")).to_be_visible()
        _no_horizontal_scroll(alice.page)
        alice.page.get_by_role("button", name="Settings").click()
        _no_horizontal_scroll(alice.page)


def test_screenshots(people: Browsers) -> None:
    """The README's pictures: `CHATD_SCREENSHOTS=1` writes docs/screenshots/*.png (light and
    dark, 1280 and 390 px wide); without it the same screens are drawn but not saved."""
    save = os.environ.get("CHATD_SCREENSHOTS") == "1"
    alice = people.register("Alice Martin")
    bob = people.register("Bob Okafor")
    carol = people.register("Carol Ng")
    befriend(alice, bob)
    bob.send("Morning! Are we still on for the release today?")
    alice.send("Yes. The web client is ready: https://chatd.example/docs")
    bob.send("Great, sending the photo from the offsite")
    _attach(bob, "offsite.png", _png(960, 640), "image/png")
    expect(alice.log().get_by_role("button", name="Open image offsite.png")).to_be_visible()
    alice.send("Looks good!\nSee you at 3.")
    carol.start_chat(alice.handle, "Alice Martin")
    carol.send("Can you review my PR?")
    alice.page.get_by_role("button", name="New group").click()
    alice.page.get_by_label("Group name").fill("Platform team")
    alice.page.get_by_label("Members (usernames, separated by commas)").fill(
        f"{bob.handle}, {carol.handle}")
    alice.page.get_by_role("button", name="Create group").click()
    alice.send("Standup moved to 10:30")
    bob.open_chat("Platform team")
    bob.page.get_by_role("textbox", name="Message").press_sequentially("On it")
    expect(alice.page.get_by_role("button", name="Chat info")).to_contain_text("typing")
    bob.page.get_by_role("textbox", name="Message").press("Enter")
    expect(alice.log().get_by_text("On it")).to_be_visible()
    if save:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for scheme in ("light", "dark"):
        for width, height in ((1280, 800), (390, 844)):
            context = people.context(viewport={"width": width, "height": height},
                                     color_scheme=scheme, device_scale_factor=1)
            page = context.new_page()
            people.watch(page)
            page.goto(people.url)
            expect(page.get_by_role("button", name="Log in")).to_be_visible()
            shots = [("login", page)]
            if save:
                page.screenshot(path=SCREENSHOTS / f"{scheme}-{width}-login.png")
            page.get_by_label("Username or phone").fill(alice.handle)
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Log in").click()
            expect(page.get_by_role("heading", name="Chats")).to_be_visible()
            nav = page.get_by_role("navigation", name="Chat list")
            expect(nav.get_by_role("button", name=re.compile("Platform team"))).to_be_visible()
            if width < 760 and save:
                page.screenshot(path=SCREENSHOTS / f"{scheme}-{width}-list.png")
            nav.get_by_role("button", name=re.compile("Bob Okafor")).click()
            image = page.get_by_role("log").get_by_role("img", name="offsite.png")
            expect(image).to_have_attribute("src", re.compile("^blob:"))
            page.wait_for_function("img => img.naturalWidth > 0", arg=image.element_handle())
            shots.append(("chat", page))
            if save:
                page.screenshot(path=SCREENSHOTS / f"{scheme}-{width}-chat.png")
            context.close()
            people.contexts.remove(context)
            assert len(shots) == 2


def test_notifications_can_be_enabled(people: Browsers) -> None:
    """Permission granted, in-tab notifications are on; Web Push is set up when the server
    offers it (GET /push/vapid), and its absence (or a browser without a push service, as
    headless chromium here) is said, not an error."""
    alice = people.register("Alice")
    alice.context.grant_permissions(["notifications"])
    alice.page.get_by_role("button", name="Settings").click()
    settings = alice.page.get_by_role("dialog", name="Settings")
    settings.get_by_role("button", name="Enable notifications").click()
    status = settings.get_by_role("region", name="Notifications").get_by_role("status")
    expect(status).to_contain_text("Notifications are on while this tab is in the background.")
    expect(status).to_contain_text("push", ignore_case=True)
