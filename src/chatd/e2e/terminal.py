"""What `chatd chat` needs for end-to-end encryption: where a user's state lives, the
passphrase, a device that stays the same from one run to the next, and how decrypted
messages and warnings read. Pure functions and small file-free helpers, tested alone.

Why keep the device: the Olm account is per device, and a login makes a new device. So
the first run saves the device's token inside the encrypted state, and later runs reuse
it (logging in again only when it was revoked or expired: a new device, a new account,
and the other side sees a key-change notice, as it should).
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from chatd.client import Credentials
from chatd.e2e.client import KeyWarning, Undecryptable
from chatd.e2e.machine import Decrypted
from chatd.e2e.store import StateStore

PASSPHRASE_ENV = "CHATD_E2E_PASSPHRASE"
LOCK = "🔒"


def state_dir_for(url: str, handle: str, environ: dict[str, str] | None = None) -> Path:
    """`$XDG_CONFIG_HOME/chatd/e2e/<host_port>/<handle>` (~/.config when unset)."""
    env = os.environ if environ is None else environ
    base = Path(env.get("XDG_CONFIG_HOME") or Path(env.get("HOME", ".")) / ".config")
    parts = urlsplit(url)
    server = f"{parts.hostname or 'localhost'}_{parts.port or 80}"
    return base / "chatd" / "e2e" / server / handle


def passphrase_from_environment_or_prompt() -> str | None:
    """The state passphrase: $CHATD_E2E_PASSPHRASE, else a prompt on a terminal; None
    when neither is possible (no terminal to ask on)."""
    if passphrase := os.environ.get(PASSPHRASE_ENV):
        return passphrase
    if not sys.stdin.isatty():
        return None
    return getpass.getpass("passphrase for your end-to-end encryption keys: ")


def saved_credentials(store: StateStore) -> Credentials | None:
    raw = store.get("credentials")
    if raw is None:
        return None
    fields = json.loads(raw)
    return Credentials(fields["token"], fields["user_id"], fields["device_id"],
                       fields["expires_at"])


def save_credentials(store: StateStore, credentials: Credentials) -> None:
    store.put("credentials", json.dumps({
        "token": credentials.token, "user_id": credentials.user_id,
        "device_id": credentials.device_id,
        "expires_at": credentials.expires_at}).encode())


def as_message(decrypted: Decrypted) -> dict[str, Any]:
    """A decrypted message as the terminal's formatter takes messages: its content's
    text as a text/plain body, marked with a lock."""
    text = decrypted.content.get("text")
    shown = f"{LOCK} {text}" if isinstance(text, str) else \
        f"{LOCK} <{', '.join(sorted(decrypted.content))}>"
    if isinstance(decrypted.content.get("reply_to"), int):
        shown += f"  (reply to #{decrypted.content['reply_to']})"
    media = decrypted.content.get("media")
    if isinstance(media, dict):
        shown += f"\n    📎 {media.get('filename') or 'a file'} ({media.get('size', '?')} " \
                 f"bytes, encrypted) media {media.get('media_id', '?')}"
    message = {key: value for key, value in decrypted.message.items()
               if key != "attachments"}  # the server's view of them is the ciphertext's
    return {**message, "content_type": "text/plain", "body": shown}


def describe_undecryptable(item: Undecryptable) -> dict[str, Any]:
    note = "waiting for its key" if item.kept else f"cannot be decrypted: {item.reason}"
    return {**item.message, "content_type": "text/plain", "body": f"{LOCK} ({note})"}


def describe_warning(item: KeyWarning, name: str) -> str:
    change = item.change
    what = {"changed": "changed its security keys", "added": "added a device",
            "removed": "removed a device"}[change.kind]
    text = f"! security: {name} {what} (device {change.device_id})"
    if change.was_verified:
        text += "; you had verified them: /verify them again"
    return text
