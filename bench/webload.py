"""The web client's first load, measured in Debian's chromium with Playwright:

    python -m bench.webload [--runs 5]

For each run, a fresh browser context (empty HTTP cache) opens the app and reports:
- bytes transferred: every response's body as sent (gzip where the server compressed it)
  plus its headers, summed over the page's requests (Playwright's `request.sizes()`);
- time to interactive: from navigation start until the sign-in form (or, with a stored
  session, the conversation list with its chats) is in the page and accepts input, read
  as `performance.now()` in the page, so the bench's own overhead is not counted.
"Signed in" loads the app for a user with a remembered session and 20 conversations.
The figures are the medians of the runs. docs/benchmarks.md records them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from typing import Any

import httpx
from playwright.sync_api import Browser, Page, Request, sync_playwright

from bench.serverproc import BenchServer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
PASSWORD = "correct horse battery"
SIGN_IN_READY = """() => {
  const button = document.querySelector('form.auth-card button[type=submit]');
  return button && !button.disabled ? performance.now() : false;
}"""
LIST_READY = """() => {
  const rows = document.querySelectorAll('nav .conv-list button.conv');
  return rows.length >= 20 ? performance.now() : false;
}"""


def _seed(url: str) -> dict[str, str]:
    """A user with 20 direct chats, one message in each; returns its login."""
    with httpx.Client(base_url=url, timeout=30) as http:
        def register(handle: str) -> str:
            http.post("/register", json={"handle": handle, "password": PASSWORD,
                                         "display_name": handle.title()})
            login = http.post("/login", json={"handle": handle, "password": PASSWORD}).json()
            return str(login["token"])

        token = register("benchuser")
        me = {"authorization": f"Bearer {token}"}
        for n in range(20):
            other = f"peer{n:02d}"
            register(other)
            peer = http.get(f"/users?handle={other}", headers=me).json()["user_id"]
            conv = http.post("/conversations/direct", headers=me,
                             json={"user_id": peer}).json()["conversation_id"]
            http.post("/messages/send", headers=me, json={
                "conversation_id": conv, "client_msg_id": f"m{n}", "content_type": "text/plain",
                "body": f"hello {other}, this is message {n}"})
        login = http.post("/login", json={"handle": "benchuser", "password": PASSWORD,
                                          "device_name": "bench"}).json()
        return {"token": login["token"], "user_id": login["user_id"],
                "device_id": login["device_id"]}


def _measure(browser: Browser, url: str, ready: str,
             session: dict[str, str] | None) -> tuple[int, int, float]:
    """(requests, bytes, ms to interactive) of one cold load."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    if session is not None:
        context.add_init_script(
            "localStorage.setItem('chatd.session', " + json.dumps(json.dumps(session)) + ")")
    page: Page = context.new_page()
    finished: list[Request] = []
    page.on("requestfinished", lambda request: finished.append(request))
    page.goto(url)
    handle = page.wait_for_function(ready, polling="raf", timeout=30_000)
    interactive = float(handle.json_value())
    page.wait_for_load_state("networkidle")
    total = 0
    for request in finished:
        if request.url.startswith("blob:") or request.url.startswith("data:"):
            continue
        sizes = request.sizes()
        total += sizes["responseBodySize"] + sizes["responseHeadersSize"]
    context.close()
    return len(finished), total, interactive


def run(runs: int) -> list[dict[str, Any]]:
    server = BenchServer()
    try:
        session = _seed(server.url)
        results = []
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            for name, ready, stored in (("sign-in page", SIGN_IN_READY, None),
                                        ("signed in, 20 chats", LIST_READY, session)):
                samples = [_measure(browser, server.url + "/", ready, stored)
                           for _ in range(runs)]
                results.append({
                    "scenario": f"web first load: {name}",
                    "requests": int(statistics.median(s[0] for s in samples)),
                    "bytes": int(statistics.median(s[1] for s in samples)),
                    "interactive_ms": round(statistics.median(s[2] for s in samples), 1),
                    "runs": runs,
                })
            browser.close()
        return results
    finally:
        server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.webload", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="cold loads per case (median)")
    args = parser.parse_args(argv)
    results = run(args.runs)
    print(f"{'case':<36} {'requests':>8} {'KB':>8} {'interactive ms':>15}")
    for r in results:
        print(f"{r['scenario']:<36} {r['requests']:>8} {r['bytes'] / 1024:>8.1f} "
              f"{r['interactive_ms']:>15.1f}")
    for r in results:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
