"""Test helpers: a config for a throwaway shard, an API client, a server subprocess."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from chatd.client import ChatClient, LiveConnection
from chatd.config import AuthConfig, Config, RateLimitsConfig, ServerConfig, StorageConfig

PASSWORD = "correct horse battery"

#: Settings that make argon2id cheap and lift the login and registration rate limits:
#: tests register and log in many users from one address; the limits are tested on their
#: own (tests/web/test_ratelimits.py).
FAST_AUTH_ENV = {
    "CHATD_AUTH_ARGON2_OPSLIMIT": "1",
    "CHATD_AUTH_ARGON2_MEMLIMIT_KIB": "8",
    "CHATD_RATELIMITS_LOGIN_PER_ACCOUNT": "off",
    "CHATD_RATELIMITS_LOGIN_PER_ADDRESS": "off",
    "CHATD_RATELIMITS_REGISTER_PER_ADDRESS": "off",
}
#: The same, for a config built in code.
FAST_AUTH_RATELIMITS = {"login_per_account": "off", "login_per_address": "off",
                        "register_per_address": "off"}
#: Sends at machine rates (hundreds back to back from one account): for tests of delivery
#: and back-pressure, which are not about limits (`start_server(ratelimits=...)`).
UNLIMITED_SENDS = {"messages_per_account": "off", "messages_per_address": "off",
                   "message_bytes_per_account": "off", "message_bytes_per_address": "off"}
UNLIMITED_SENDS_ENV = {f"CHATD_RATELIMITS_{key.upper()}": value
                       for key, value in UNLIMITED_SENDS.items()}


def make_config(data_dir: Path, **sections: Mapping[str, Any]) -> Config:
    config = Config(
        server=ServerConfig(listen="127.0.0.1:0", graceful_timeout=1.0),
        storage=StorageConfig(data_dir=str(data_dir)),
        auth=AuthConfig(argon2_opslimit=1, argon2_memlimit_kib=8),
        ratelimits=RateLimitsConfig(**FAST_AUTH_RATELIMITS),
    )
    for name, values in sections.items():
        config = dataclasses.replace(
            config, **{name: dataclasses.replace(getattr(config, name), **values)})
    return config


_handles = itertools.count(1)


def fresh_handle(prefix: str = "user") -> str:
    return f"{prefix}{os.getpid()}_{next(_handles)}"


@dataclass
class Account:
    """A logged-in user: every request carries its bearer token."""

    http: httpx.AsyncClient
    handle: str
    user_id: str
    device_id: str
    token: str
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.headers = {"Authorization": f"Bearer {self.token}"}

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.http.get(path, headers=self.headers, **kwargs)

    async def post(self, path: str, json: Any = None, **kwargs: Any) -> httpx.Response:
        return await self.http.post(path, json=json, headers=self.headers, **kwargs)

    async def patch(self, path: str, json: Any = None, **kwargs: Any) -> httpx.Response:
        return await self.http.patch(path, json=json, headers=self.headers, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.http.delete(path, headers=self.headers, **kwargs)

    async def send(self, conversation_id: str, text: str, client_msg_id: str | None = None,
                   ) -> httpx.Response:
        return await self.post("/messages/send", {
            "conversation_id": conversation_id,
            "client_msg_id": client_msg_id or f"c{next(_handles)}",
            "content_type": "text/plain",
            "body": text,
        })

    async def direct_with(self, other: Account, *, accept: bool = True) -> str:
        """The pair's direct chat; `other` accepts the message request it opens (unless
        `accept` is false), so they are contacts (docs/privacy.md): tests of anything but
        requests expect contact-level receipts and presence."""
        response = await self.post("/conversations/direct", {"user_id": other.user_id})
        assert response.status_code in (200, 201), response.text
        conversation_id: str = response.json()["conversation_id"]
        if accept and other.user_id != self.user_id \
                and response.json().get("request") == "sent":
            accepted = await other.post(f"/conversations/{conversation_id}/accept")
            assert accepted.status_code == 200, accepted.text
        return conversation_id

    async def group(self, name: str, *members: Account) -> str:
        response = await self.post("/groups/create",
                                   {"name": name, "members": [m.user_id for m in members]})
        assert response.status_code == 201, response.text
        conversation_id: str = response.json()["conversation_id"]
        return conversation_id


async def new_account(http: httpx.AsyncClient, handle: str | None = None,
                      device_name: str = "test device") -> Account:
    handle = handle or fresh_handle()
    response = await http.post("/register", json={
        "handle": handle, "password": PASSWORD, "display_name": handle.title()})
    assert response.status_code == 201, response.text
    return await login(http, handle, device_name)


async def login(http: httpx.AsyncClient, handle: str, device_name: str = "test device",
                ) -> Account:
    response = await http.post("/login", json={
        "handle": handle, "password": PASSWORD, "device_name": device_name})
    assert response.status_code == 200, response.text
    body = response.json()
    return Account(http, handle, body["user_id"], body["device_id"], body["token"])


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, error


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on now (for configs that must name one)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class ServerProcess:
    """`python -m chatd serve` in a child process, for crash and signal tests."""

    def __init__(self, data_dir: Path, log_path: Path,
                 extra_env: Mapping[str, str] | None = None, args: Sequence[str] = ()) -> None:
        env = {**os.environ, **FAST_AUTH_ENV, **(extra_env or {})}
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115  # closed in wait()/kill()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "chatd", "serve", "--listen", "127.0.0.1:0",
             "--data", str(data_dir), *args],
            stdout=self._log, stderr=self._log, env=env)
        self.url = ""

    async def ready(self) -> str:
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline:
            for line in self.log_path.read_text().splitlines():
                if "chatd.server: serving " in line:
                    self.url = line.split("serving ", 1)[1].split()[0]
                    return self.url
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log_path.read_text()}")
            await trio.sleep(0.05)
        raise TimeoutError(f"server not ready:\n{self.log_path.read_text()}")

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self._log.close()

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=20)
        self._log.close()
        return code


class ErrorLog(logging.Handler):
    """Every record the server logs with a traceback or at ERROR and above."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.ERROR:
            text = f"{record.name} {record.levelname}: {record.getMessage()}"
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            self.records.append(text)


@asynccontextmanager
async def error_log() -> AsyncIterator[ErrorLog]:
    """What an in-process server logs as an error while the block runs."""
    handler = ErrorLog()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


class ManualClock:
    """Wall-clock time that a test moves (`clock.now += ms`)."""

    def __init__(self) -> None:
        self.now = time.time_ns() // 1_000_000

    def now_ms(self) -> int:
        return self.now


@asynccontextmanager
async def live(url: str, account: Account) -> AsyncIterator[LiveConnection]:
    """`account`'s WebSocket to the server at `url`, through the Python client."""
    async with ChatClient(url, token=account.token) as client, \
            client.connect() as connection:
        yield connection


async def next_of(connection: LiveConnection, kind: str) -> dict[str, Any]:
    """The next event of type `kind` (others are skipped), within 5 s."""
    with trio.fail_after(5):
        while True:
            event: dict[str, Any] = await connection.next_event()
            if event["type"] == kind:
                return event


def disk_marker() -> str:
    """A unique string for scans of the data directory. RocksDB compresses table files,
    and a 4-byte run the block holds earlier is stored as a back-reference, splitting the
    needle: so the marker avoids the hex digits and ids the rest of a block is made of
    (a hex marker was once not found in the table file it was in)."""
    return "marker-" + uuid.uuid4().hex.translate(str.maketrans("0123456789abcdef",
                                                                   "ghijklmnopqrstuv"))
