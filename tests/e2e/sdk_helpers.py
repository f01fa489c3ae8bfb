"""SDK users over a real server: a registered, logged-in `ChatClient` with its
`E2EClient` (state in a temp dir, cheap argon2id), and waiting for decrypted events."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from chatd.client import ChatClient, LiveConnection
from chatd.e2e import wire
from chatd.e2e.client import E2EClient, E2EEvent, KeyWarning, Undecryptable
from chatd.e2e.machine import Decrypted
from tests.e2e.crypto_helpers import CHEAP
from tests.helpers import PASSWORD, fresh_handle


@dataclass
class SdkUser:
    chat: ChatClient
    e2e: E2EClient
    handle: str
    state_dir: Path

    @property
    def user_id(self) -> str:
        return self.e2e.machine.user_id


@asynccontextmanager
async def sdk_user(url: str, tmp: Path, handle: str | None = None,
                   passphrase: str = "a long pass phrase", register: bool = True,
                   ) -> AsyncIterator[SdkUser]:
    handle = handle or fresh_handle("e2e")
    async with ChatClient(url) as chat:
        if register:
            await chat.register(handle, PASSWORD, handle.title())
        credentials = await chat.login(handle, PASSWORD)
        state_dir = tmp / f"{handle}-{credentials.device_id}"
        e2e = await E2EClient.open(chat, state_dir, passphrase, **CHEAP)
        yield SdkUser(chat, e2e, handle, state_dir)


async def next_item(user: SdkUser, live: LiveConnection, kind: type,
                    seconds: float = 10) -> Any:
    """The next SDK event of class `kind` on `live` (others are skipped)."""
    with trio.fail_after(seconds):
        while True:
            for item in await user.e2e.handle(await live.next_event(), live):
                if isinstance(item, kind):
                    return item


async def next_decrypted(user: SdkUser, live: LiveConnection) -> Decrypted:
    item: Decrypted = await next_item(user, live, Decrypted)
    return item


async def drain(user: SdkUser, live: LiveConnection, seconds: float = 0.5,
                ) -> list[E2EEvent]:
    """Everything the SDK makes of what arrives within `seconds`."""
    items: list[E2EEvent] = []
    with trio.move_on_after(seconds):
        while True:
            items.extend(await user.e2e.handle(await live.next_event(), live))
    return items


def olm_type_for(message: dict[str, Any], user: SdkUser) -> int:
    body = message["body"]
    raw = body if isinstance(body, bytes) else base64.b64decode(body)
    return wire.OlmBody.from_bytes(raw).ciphertexts[user.e2e.machine.identity.curve25519][0]


__all__ = ["Decrypted", "KeyWarning", "SdkUser", "Undecryptable", "drain", "next_decrypted",
           "next_item", "olm_type_for", "sdk_user"]
