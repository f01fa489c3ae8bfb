"""Server CPU per email digest, sent to a local SMTP sink.

`python -m bench.email_digest [--users N] [--messages M] [--previews]` starts aiosmtpd's
sink (`python -m aiosmtpd -c aiosmtpd.handlers.Sink`, a separate process: its CPU is not
counted) and one chatd shard in this process, with a clock the benchmark moves. N users
verify an address and turn digests on; one sender writes M messages into a direct chat
with each of them. Then the clock jumps past the delay and every digest falls due at
once: the figure is this process's CPU (all threads: the loop and the smtplib workers)
from the jump until the SMTP server has accepted all N digests, divided by N. Nothing
else runs in that window (the HTTP client is idle). aiosmtpd is in the `test` extra.
"""

from __future__ import annotations

import argparse
import resource
import socket
import subprocess
import sys
import tempfile
import time
from functools import partial

import httpx
import trio

from chatd.config import (
    AuthConfig,
    Config,
    EmailConfig,
    PrivacyConfig,
    RateLimitsConfig,
    ServerConfig,
    StorageConfig,
)
from chatd.domain import email_links
from chatd.server import RunningServer, serve
from chatd.storage import claim_secret

PASSWORD = "correct horse battery"
DELAY_S = 600


class Clock:
    def __init__(self) -> None:
        self.now = time.time_ns() // 1_000_000

    def now_ms(self) -> int:
        return self.now


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _wait_for_port(port: int) -> None:
    with trio.fail_after(20):
        while True:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.05)
                continue
            await stream.aclose()
            return


async def _account(http: httpx.AsyncClient, handle: str) -> dict[str, str]:
    registered = await http.post("/register", json={
        "handle": handle, "password": PASSWORD, "display_name": handle.title()})
    assert registered.status_code == 201, registered.text
    login = await http.post("/login", json={"handle": handle, "password": PASSWORD})
    assert login.status_code == 200, login.text
    data = login.json()
    return {"user_id": data["user_id"], "auth": f"Bearer {data['token']}"}


async def run(users: int, messages: int, previews: bool) -> None:
    port = _free_port()
    sink = subprocess.Popen([sys.executable, "-m", "aiosmtpd", "-n", "-l",  # noqa: ASYNC220  # started once, before anything runs
                             f"127.0.0.1:{port}", "-c", "aiosmtpd.handlers.Sink"])
    try:
        await _wait_for_port(port)
        with tempfile.TemporaryDirectory() as data:
            await _measure(port, data, users, messages, previews)
    finally:
        sink.terminate()
        sink.wait()  # it exits at once on SIGTERM


async def _measure(port: int, data: str, users: int, messages: int, previews: bool) -> None:
    config = Config(
        server=ServerConfig(listen="127.0.0.1:0"), storage=StorageConfig(data_dir=data),
        auth=AuthConfig(argon2_opslimit=1, argon2_memlimit_kib=8),
        ratelimits=RateLimitsConfig.unlimited(),
        privacy=PrivacyConfig(message_requests=False),
        email=EmailConfig(host="127.0.0.1", port=port, security="none",
                          from_address="chatd <notify@bench.example>",
                          base_url="https://bench.example", check_interval=0.02))
    clock = Clock()
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        server: RunningServer = await nursery.start(
            partial(serve, config, shutdown=shutdown, clock=clock))
        notifier = server.services.email
        secret = claim_secret(server.services.store, "email_link_secret")
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            sender = await _account(http, "sender")
            recipients = []
            for number in range(users):
                user = await _account(http, f"reader{number}")
                headers = {"authorization": user["auth"]}
                address = f"reader{number}@bench.example"
                await http.patch("/me/notifications", headers=headers,
                                 json={"email": address, "email_enabled": True})
                token = email_links.make(secret, "verify", int(user["user_id"]), address,
                                         clock.now)
                verified = await http.get("/email/verify", params={"token": token})
                assert verified.status_code == 200, verified.text
                if previews:
                    await http.patch("/me/notifications/previews", headers=headers,
                                     json={"previews": True})
                recipients.append(user)
            for user in recipients:
                opened = await http.post("/conversations/direct",
                                         headers={"authorization": sender["auth"]},
                                         json={"user_id": user["user_id"]})
                conversation = opened.json()["conversation_id"]
                for number in range(messages):
                    sent = await http.post("/messages/send", headers={
                        "authorization": sender["auth"]}, json={
                        "conversation_id": conversation, "client_msg_id": f"m{number}",
                        "content_type": "text/plain", "body": f"message {number} " * 8})
                    assert sent.status_code == 201, sent.text
        with trio.fail_after(30):
            while notifier.counts["verifications"] < users:  # noqa: ASYNC110  # a counter
                await trio.sleep(0.05)
        await trio.sleep(1.0)  # the due times land; the loop goes quiet
        before_sent = notifier.counts["sent"]
        cpu, wall = _cpu_s(), time.perf_counter()
        clock.now += (DELAY_S + 1) * 1000
        with trio.fail_after(300):
            while notifier.counts["sent"] - before_sent < users:  # noqa: ASYNC110  # a counter
                await trio.sleep(0.005)
        cpu, wall = _cpu_s() - cpu, time.perf_counter() - wall
        failed = notifier.counts["failed"]
        shutdown.set()
    print(f"digests sent: {users} ({messages} messages each, previews "
          f"{'on' if previews else 'off'}), failed sends: {failed}")
    print(f"server CPU per digest: {cpu / users * 1000:.2f} ms "
          f"(total {cpu:.2f} s CPU over {wall:.2f} s wall; {users / wall:.0f} digests/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--messages", type=int, default=3)
    parser.add_argument("--previews", action="store_true")
    args = parser.parse_args()
    trio.run(run, args.users, args.messages, args.previews)


if __name__ == "__main__":
    main()
