"""A real chatd and Debian's chromium, driven by Playwright's sync API.

Playwright runs its own asyncio loop, and the suite's tests run under pytest-trio, so the
browser tests are plain (sync) tests and the server is a `chatd serve` subprocess on a
free port with a temp data dir. One server and one browser per module; each test opens
fresh browser contexts (one per user, like two people on two computers).

Chromium comes from Debian (`/usr/bin/chromium`, installed by `ensure_binary` when
missing): Playwright's own browser download cannot work here. If it cannot be installed,
the tests error loudly (SystemPackageError); they are never skipped.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from playwright.sync_api import Browser, BrowserContext, Locator, Page, Playwright, expect

from tests.helpers import FAST_AUTH_ENV, UNLIMITED_SENDS_ENV
from tests.system_packages import ensure_binary

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
PASSWORD = "correct horse battery"
# Fail in seconds, not Playwright's default 30 s per wait: everything here is local.
expect.set_options(timeout=10_000)
#: Every test makes its own users; handles must be unique on the module's server.
_handles = itertools.count(1)


def chromium_path() -> str:
    return ensure_binary("chromium", "chromium")


def launch(playwright: Playwright) -> Browser:
    return playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)


class ChatdProcess:
    """`chatd serve` on 127.0.0.1 with a port of its own choosing."""

    def __init__(self, data_dir: Path, log_path: Path,
                 extra_env: Mapping[str, str] | None = None, listen: str = "127.0.0.1:0",
                 ) -> None:
        # CHATD_SCREENSHOTS is the tests' switch, not a server setting (chatd refuses
        # CHATD_* variables it does not know).
        inherited = {k: v for k, v in os.environ.items() if k != "CHATD_SCREENSHOTS"}
        env = {**inherited, **FAST_AUTH_ENV, **UNLIMITED_SENDS_ENV,
               "CHATD_RATELIMITS_HANDLE_LOOKUP_PER_ACCOUNT": "off",
               "CHATD_RATELIMITS_HANDLE_LOOKUP_PER_ADDRESS": "off",
               "CHATD_RATELIMITS_NEW_CONVERSATIONS_PER_ACCOUNT": "off",
               **(extra_env or {})}
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115  # closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "chatd", "serve", "--listen", listen,
             "--data", str(data_dir)], stdout=self._log, stderr=self._log, env=env)
        self.url = self._wait_ready()

    def _wait_ready(self) -> str:
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            for line in self.log_path.read_text().splitlines():
                if "chatd.server: serving " in line:
                    return line.split("serving ", 1)[1].split()[0]
            if self.process.poll() is not None:
                self._log.close()
                raise RuntimeError(f"chatd exited early:\n{self.log_path.read_text()}")
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"chatd did not start:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def _expected_noise(text: str) -> bool:
    """Console errors a browser prints for network failures the tests cause on purpose
    (offline, a server-side 4xx the app shows); a CSP violation or a script error is
    never one of them."""
    return text.startswith(("Failed to load resource", "WebSocket connection to",
                            # Playwright's contexts are incognito: Chrome has no Web Push
                            # there (the app says so, test_notifications_can_be_enabled).
                            "Chrome currently does not support the Push API in incognito"))


@dataclass
class User:
    """One person in their own browser context."""

    context: BrowserContext
    page: Page
    handle: str
    name: str

    def send(self, text: str) -> None:
        box = self.page.get_by_role("textbox", name="Message")
        box.fill(text)
        box.press("Enter")

    def open_chat(self, title: str) -> None:
        self.page.get_by_role("navigation", name="Chat list").get_by_role(
            "button", name=title).first.click()
        expect(self.title()).to_have_text(title)

    def start_chat(self, handle: str, title: str) -> None:
        self.page.get_by_role("button", name="New chat").click()
        self.page.get_by_label("Their username or phone").fill(handle)
        self.page.get_by_role("button", name="Start chat").click()
        expect(self.title()).to_have_text(title)

    def title(self) -> Locator:
        """The open chat's name, in its header."""
        return self.page.get_by_role("button", name="Chat info").get_by_role("heading")

    def token(self) -> str:
        """This browser's bearer token (for seeding through the REST API)."""
        raw = self.page.evaluate("sessionStorage.getItem('chatd.session') || "
                                 "localStorage.getItem('chatd.session')")
        return str(json.loads(raw)["token"])

    def log(self) -> Locator:
        return self.page.get_by_role("log", name="Messages")


class Browsers:
    """Makes users: a browser context each, registered (or logged in) through the page."""

    def __init__(self, browser: Browser, url: str) -> None:
        self.browser = browser
        self.url = url
        self.contexts: list[BrowserContext] = []
        self.errors: list[str] = []

    def context(self, **options: object) -> BrowserContext:
        context = self.browser.new_context(**{"viewport": {"width": 1280, "height": 800},
                                              "locale": "en-GB", **options})
        context.set_default_timeout(15_000)
        self.contexts.append(context)
        return context

    def watch(self, page: Page) -> None:
        page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))
        page.on("console", lambda message: self.errors.append(f"console: {message.text}")
                if message.type == "error" and not _expected_noise(message.text) else None)

    def register(self, name: str, *, remember: bool = False, **options: object) -> User:
        handle = f"{name.lower()[:12]}{os.getpid() % 1000}x{next(_handles)}"
        handle = "".join(ch for ch in handle if ch.isalnum()) or f"user{next(_handles)}"
        context = self.context(**options)
        page = context.new_page()
        self.watch(page)
        page.goto(self.url)
        page.get_by_role("button", name="Create an account").click()
        page.get_by_label("Username or phone").fill(handle)
        page.get_by_label("Display name").fill(name)
        page.get_by_label("Password").fill(PASSWORD)
        if remember:
            page.get_by_label("Remember me on this device").check()
        page.get_by_role("button", name="Create account").click()
        expect(page.get_by_role("heading", name="Chats")).to_be_visible()
        return User(context, page, handle, name)

    def close(self) -> None:
        for context in self.contexts:
            context.close()


def befriend(a: User, b: User) -> None:
    """A direct chat that b accepted: receipts and presence flow both ways."""
    a.start_chat(b.handle, b.name)
    a.send(f"hi {b.name}")
    b.page.get_by_role("list", name="Message requests").get_by_role(
        "button", name=a.name).click()
    b.page.get_by_role("button", name="Accept").click()
    expect(b.page.get_by_role("group", name="Message request")).to_have_count(0)

