"""`E2EClient`: end-to-end encryption over `chatd.client`, the I/O around `E2EMachine`.

    async with ChatClient(url) as chat:
        await chat.login("alice", password)
        e2e = await E2EClient.open(chat, state_dir, passphrase)
        async with chat.connect() as live:
            await e2e.send(conversation_id, {"text": "hi"}, live=live)
            async for item in e2e.events(live):
                ...  # Decrypted, Undecryptable, KeyWarning, or any other frame as is

What it does for the application:
- keys: the first upload, and a refill on every `keys_low` frame;
- sending: the conversation's members and their devices (`/keys/query`, cached until a
  `device_list` frame, a membership entry or a `409 device_list_stale` says otherwise),
  Olm sessions for new devices (`/keys/claim`), then an Olm body per message in a direct
  chat or a Megolm body in a group, its session key shared first over to-device
  messages;
- receiving: decryption of encrypted messages, room keys from `to_device` frames (saved,
  then acknowledged), messages that wait for a key kept and decrypted when it comes;
- trust: every device-list change is compared with what was trusted (`KeyWarning`).

State is saved before anything is sent or acknowledged (`E2EMachine`'s rule). Passphrase
derivation and file writes block briefly; opening runs in a thread.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from chatd.client import ApiError, ChatClient, LiveConnection, new_client_msg_id
from chatd.e2e import sealed, wire
from chatd.e2e.account import verify_signature
from chatd.e2e.errors import DecryptionError, E2EError, MissingKeys, UntrustedKeys
from chatd.e2e.machine import ENCRYPTED_TYPES, Decrypted, E2EMachine
from chatd.e2e.store import DEFAULT_MEMLIMIT, DEFAULT_OPSLIMIT, StateStore
from chatd.e2e.trust import DeviceKeys, KeyChange

#: System entries after which a conversation's member list is fetched again.
#: A used fallback key is replaced at most this often (seconds).
FALLBACK_ROTATION_S = 60
#: How many sent contents are remembered for their echo.
_SENT_KEPT = 256
_MEMBERSHIP_EVENTS = frozenset({"group_created", "members_added", "members_removed",
                                "member_left", "invite_accepted", "member_erased"})


@dataclass(frozen=True)
class Undecryptable:
    """A message that could not be read; `kept` ones are retried when keys arrive."""

    message: dict[str, Any]
    reason: str
    kept: bool


@dataclass(frozen=True)
class KeyWarning:
    """Someone's devices changed (a new device, a removed one, or changed keys)."""

    change: KeyChange


E2EEvent = Decrypted | Undecryptable | KeyWarning | dict[str, Any]


def _signed_device(user_id: str, raw: object) -> DeviceKeys | None:
    """A device of a key query's answer, if well formed and self-signed (the server is
    not trusted to get either right)."""
    if not isinstance(raw, dict):
        return None
    fields = [raw.get(name) for name in ("device_id", "curve25519", "ed25519", "signature")]
    if not all(isinstance(value, str) and value for value in fields):
        return None
    device_id, curve, ed, signature = (str(value) for value in fields)
    if not verify_signature(ed, curve, signature):
        return None
    return DeviceKeys(user_id, device_id, curve, ed)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class E2EClient:
    def __init__(self, client: ChatClient, machine: E2EMachine,
                 now_ms: Callable[[], int] = _now_ms) -> None:
        self.client = client
        self.machine = machine
        self.now_ms = now_ms
        #: user id -> device-list version of the devices we know.
        self.versions: dict[str, int] = {}
        #: Direct conversations' member lists (they never change). A group's is read
        #: before every send: the log entry of a removal reaches us on the live stream,
        #: which may lag behind (a send right after connecting, before catch-up), and
        #: encrypting with a stale list would share the session with the removed member.
        self._conversations: dict[str, tuple[str, list[str]]] = {}
        #: One task at a time changes the crypto state: a send (sharing a session, then
        #: encrypting) and the receive loop (a removal rotating that session) interleave
        #: at every await otherwise.
        self._lock = trio.Lock()
        #: Key changes not yet delivered through `events()`.
        self.warnings: list[KeyChange] = []
        self._fallback_rotated_ms = 0
        #: What this device sent lately, by (conversation, client_msg_id): the server
        #: echoes a REST send to the sender's own socket, and nothing is encrypted for
        #: the sending device itself.
        self._sent: dict[tuple[str, str], dict[str, Any]] = {}
        #: (user, device) -> its published sealed-sender key, signature checked.
        self.sealed_keys: dict[tuple[str, str], str] = {}
        #: The sender certificate in use (`GET /certificate/sender`), until it expires.
        self._certificate: dict[str, Any] | None = None
        #: The server's certificate keys (key_id -> base64), fetched on first need and
        #: again for a key_id not in it.
        self._server_keys: dict[str, str] = {}

    @classmethod
    async def open(cls, client: ChatClient, state_dir: Path, passphrase: str, *,
                   opslimit: int = DEFAULT_OPSLIMIT, memlimit: int = DEFAULT_MEMLIMIT,
                   now_ms: Callable[[], int] = _now_ms) -> E2EClient:
        """Open (or create) this device's state in `state_dir` and publish its keys if it
        has not yet. `WrongPassphrase` when the passphrase does not open it."""
        store = await trio.to_thread.run_sync(
            lambda: StateStore.open(state_dir, passphrase, opslimit=opslimit,
                                    memlimit=memlimit))
        return await cls.from_store(client, store, now_ms=now_ms)

    @classmethod
    async def from_store(cls, client: ChatClient, store: StateStore, *,
                         now_ms: Callable[[], int] = _now_ms) -> E2EClient:
        """As `open`, with the state already open (`chatd chat` keeps its device's token
        in it too)."""
        credentials = client.credentials
        if credentials is None:
            raise E2EError("log in before opening the E2E state (it belongs to a device)")
        machine = E2EMachine.load(store, credentials.user_id, credentials.device_id)
        e2e = cls(client, machine, now_ms)
        await e2e.publish_keys()
        return e2e

    # -- keys -----------------------------------------------------------------------------

    async def publish_keys(self) -> int:
        """The first upload: identity, one-time keys and a fallback key. Nothing once
        done (returns -1)."""
        if self.machine.uploaded:
            if not self.machine.sealed_published:
                # A device from before sealed sender: its sealed-sender key, once.
                await self._upload({"identity": self._identity(), "one_time_keys": {}})
            return -1
        return await self._upload(self.machine.account.prepare_upload())

    def _identity(self) -> dict[str, Any]:
        """The identity of `/keys/upload`, with the sealed-sender key."""
        return {**self.machine.account.identity_payload(),
                "sealed_key": self.machine.sealed_key_payload()}

    async def refill_keys(self, fallback_used: bool = False) -> int:
        """After `keys_low`: top the directory up to the target. The frame's count may
        be stale (one comes per claim below the threshold, and an earlier one may have
        refilled already), so the server is asked for the current count first; a used
        fallback key is replaced once per `FALLBACK_ROTATION_S`, not once per frame (the
        account keeps only the previous fallback key, and a pre-key message on it may be
        on its way)."""
        account = self.machine.account
        count = await self.client.upload_keys(self._identity())
        now = self.now_ms()
        rotate = fallback_used and now - self._fallback_rotated_ms > FALLBACK_ROTATION_S * 1000
        if rotate:
            self._fallback_rotated_ms = now
        body = account.prepare_upload(server_count=count, new_fallback=rotate)
        if not body["one_time_keys"] and "fallback_key" not in body:
            return count
        return await self._upload(body)

    async def _upload(self, body: dict[str, Any]) -> int:
        self.machine.save()  # the private halves before the public ones go out
        identity = {**body["identity"], "sealed_key": self.machine.sealed_key_payload()}
        count = await self.client.upload_keys(identity, body["one_time_keys"],
                                              body.get("fallback_key"))
        self.machine.account.mark_published()
        self.machine.uploaded = True
        self.machine.sealed_published = True
        self.machine.save()
        return count

    async def refresh_devices(self, user_ids: list[str]) -> list[KeyChange]:
        """Query these users' devices and compare them with what we trust."""
        wanted = sorted(set(user_ids))
        answers = await self.client.query_keys(wanted)
        changes: list[KeyChange] = []
        for user_id, answer in zip(wanted, answers, strict=True):
            user_id = str(answer.get("user_id", user_id))
            devices = [device for raw in answer.get("devices", [])
                       if (device := _signed_device(user_id, raw)) is not None]
            for raw in answer.get("devices", []):
                self._note_sealed_key(user_id, raw, devices)
            self.versions[user_id] = int(answer.get("version", 0))
            changes.extend(self.machine.observe_devices(user_id, devices))
        self.machine.save()
        self.warnings.extend(changes)
        return changes

    def _note_sealed_key(self, user_id: str, raw: object, devices: list[DeviceKeys],
                         ) -> None:
        """A device's sealed-sender key, kept if its own ed25519 key signed it."""
        if not isinstance(raw, dict):
            return
        sealed_key = raw.get("sealed_key")
        device = next((d for d in devices if d.device_id == str(raw.get("device_id"))),
                      None)
        if device is None or not isinstance(sealed_key, dict):
            return
        key, signature = sealed_key.get("key"), sealed_key.get("signature")
        if isinstance(key, str) and isinstance(signature, str) and verify_signature(
                device.ed25519, key, signature):
            self.sealed_keys[(user_id, device.device_id)] = key

    async def _ensure_sessions(self, devices: list[DeviceKeys]) -> list[DeviceKeys]:
        """Open Olm sessions to the devices that have none; returns the devices we can
        encrypt to (those the server had no key for, or gave a badly signed one, are
        left out)."""
        missing = self.machine.needs_session(devices)
        if missing:
            claimed = await self.client.claim_keys(
                [(d.user_id, d.device_id) for d in missing])
            by_device = {(str(k.get("user_id")), str(k.get("device_id"))): k
                         for k in claimed.get("keys", []) if isinstance(k, dict)}
            for device in missing:
                key = by_device.get((device.user_id, device.device_id))
                if key is None or not (isinstance(key.get("key"), str)
                                       and isinstance(key.get("signature"), str)):
                    continue
                try:
                    self.machine.start_session(device, key["key"], key["signature"])
                except UntrustedKeys:
                    # A key the device did not sign: the server's, not theirs. Skip the
                    # device and say so.
                    self.warnings.append(KeyChange(device.user_id, device.device_id,
                                                   "changed", device, None, False))
            self.machine.save()
        return [d for d in devices if not self.machine.needs_session([d])]

    # -- conversations ------------------------------------------------------------------

    async def _conversation(self, conversation_id: str) -> tuple[str, list[str]]:
        known = self._conversations.get(conversation_id)
        if known is None:
            info = await self.client.request("GET", f"/conversations/{conversation_id}")
            known = (str(info["kind"]), [str(m["user_id"]) for m in info["members"]])
            if known[0] == "direct":
                self._conversations[conversation_id] = known
        return known

    async def safety_number(self, user_id: str) -> str:
        """The digits to compare with `user_id` in person (their keys fetched first)."""
        await self.refresh_devices([user_id, self.machine.user_id])
        return self.machine.safety_number(user_id)

    def verify(self, user_id: str) -> None:
        """The safety numbers matched: remember these keys as verified."""
        self.machine.trust.verify(user_id)
        self.machine.save()

    def accept_key_change(self, user_id: str, device_id: str) -> None:
        """The user saw a `changed` warning and accepts the device's new keys."""
        self.machine.trust.accept(user_id, device_id)
        self.machine.save()

    # -- sending --------------------------------------------------------------------------

    async def send(self, conversation_id: str, content: dict[str, Any], *,
                   live: LiveConnection | None = None,
                   attachments: list[str | tuple[str, str]] | None = None,
                   client_msg_id: str | None = None) -> dict[str, Any]:
        """Encrypt `content` for every member device and send it (over `live` when given,
        else REST). Returns the server's answer (`seq`, `message_id`, `ts`)."""
        client_msg_id = client_msg_id or new_client_msg_id()
        self._sent[(conversation_id, client_msg_id)] = content
        while len(self._sent) > _SENT_KEPT:
            del self._sent[next(iter(self._sent))]
        for attempt in range(3):
            async with self._lock:
                content_type, body, versions = await self._encrypt(conversation_id,
                                                                   content)
            try:
                if live is not None:
                    return await live.send(conversation_id, body, content_type=content_type,
                                           client_msg_id=client_msg_id,
                                           attachments=attachments,
                                           device_list_version=versions)
                return await self.client.send(
                    conversation_id, wire.b64(body), content_type=content_type,
                    client_msg_id=client_msg_id, attachments=attachments,
                    device_list_version=versions)
            except ApiError as exc:
                if exc.code != "device_list_stale" or attempt == 2:
                    raise
                stale = [str(u) for u in exc.details.get("users", [])] or versions.keys()
                await self.refresh_devices(list(stale))
        raise AssertionError("unreachable")

    async def _encrypt(self, conversation_id: str, content: dict[str, Any],
                       ) -> tuple[str, bytes, dict[str, int]]:
        kind, members = await self._conversation(conversation_id)
        unknown = [u for u in members if u not in self.versions]
        if unknown:
            await self.refresh_devices(unknown)
        devices = await self._ensure_sessions(self.machine.recipients(members))
        versions = {u: self.versions[u] for u in members if u in self.versions}
        if kind == "direct":
            others = [u for u in members if u != self.machine.user_id]
            if others and not any(d.user_id in others for d in devices):
                raise E2EError(f"user {others[0]} has no device with end-to-end keys yet "
                               f"(nothing sent): they need a client with encryption on")
            body = self.machine.encrypt_direct(conversation_id, content, devices)
            self.machine.save()
            return wire.OLM_CONTENT_TYPE, body, versions
        outbound = self.machine.group_session(conversation_id, self.now_ms(), devices)
        shares = self.machine.room_key_messages(outbound, devices)
        self.machine.save()
        if shares:
            await self.client.send_to_device(shares)
            self.machine.mark_shared(outbound, devices)
        body = self.machine.encrypt_group(outbound, content)
        self.machine.save()
        return wire.MEGOLM_CONTENT_TYPE, body, versions

    # -- sealed sender ----------------------------------------------------------------------

    async def sealed_send(self, user_id: str, device_id: str, content: dict[str, Any],
                          access_key: bytes) -> None:
        """Send `content` to one device of `user_id` without the server learning who sent
        it: Olm-encrypted to the device, then sealed (with our sender certificate) to the
        device's sealed-sender key, and posted without our token. `access_key` is the
        recipient's unidentified access key, which the application got from them (they
        chose it with `ChatClient.set_access_key` and shared it, in an encrypted message
        for instance): the SDK does not distribute it."""
        async with self._lock:
            certificate = await self._sender_certificate()
            if (user_id, device_id) not in self.sealed_keys or \
                    self._trusted(user_id, device_id) is None:
                await self.refresh_devices([user_id])
            device = self._trusted(user_id, device_id)
            recipient_key = self.sealed_keys.get((user_id, device_id))
            if device is None or recipient_key is None:
                raise E2EError(f"device {user_id}/{device_id} has no sealed-sender key "
                               "(or no keys at all) in the directory")
            if not await self._ensure_sessions([device]):
                raise E2EError(f"no Olm session to {user_id}/{device_id} (no key to claim)")
            message = self.machine.encrypt_sealed(device, content)
            self.machine.save()  # the ratchet step before the message goes out
        envelope = sealed.seal(recipient_key, certificate, message)
        await self.client.sealed_send(user_id, device_id, envelope, access_key)

    def _trusted(self, user_id: str, device_id: str) -> DeviceKeys | None:
        return next((d for d in self.machine.trust.trusted(user_id)
                     if d.device_id == device_id), None)

    async def _sender_certificate(self) -> dict[str, Any]:
        """Ours, fetched again a minute before it expires."""
        cert = self._certificate
        if cert is None or int(cert.get("expires", 0)) - 60_000 <= self.now_ms():
            cert = self._certificate = await self.client.sender_certificate()
        return cert

    async def _open_sealed(self, event: dict[str, Any]) -> Decrypted:
        if not self._server_keys:
            self._server_keys = await self.client.server_keys()
        try:
            return self.machine.open_sealed(event, self._server_keys, self.now_ms())
        except sealed.UnknownServerKey:
            self._server_keys = await self.client.server_keys()
            return self.machine.open_sealed(event, self._server_keys, self.now_ms())

    # -- receiving ------------------------------------------------------------------------

    async def events(self, live: LiveConnection) -> AsyncIterator[E2EEvent]:
        """Every frame of `live`, with encrypted messages decrypted, room keys taken in
        (and acknowledged), key refills done, and key changes reported."""
        async for event in live.events():
            for item in await self.handle(event, live):
                yield item

    async def handle(self, event: dict[str, Any], live: LiveConnection | None = None,
                     ) -> list[E2EEvent]:
        """One frame of the live stream, as `events()` gives it."""
        async with self._lock:
            return await self._handle(event, live)

    async def _handle(self, event: dict[str, Any], live: LiveConnection | None,
                      ) -> list[E2EEvent]:
        kind = event.get("type")
        out: list[E2EEvent] = []
        if kind == "message":
            out.extend(await self._on_message(event["message"]))
        elif kind == "to_device":
            out.extend(await self._on_to_device(event, live))
        elif kind == "keys_low":
            await self.refill_keys(bool(event.get("fallback_used")))
        elif kind == "device_list" and isinstance(event.get("user_id"), str):
            self.versions.pop(event["user_id"], None)
            await self.refresh_devices([event["user_id"]])
            out.append(event)
        else:
            out.append(event)
        out.extend(KeyWarning(change) for change in self.warnings)
        self.warnings.clear()
        return out

    async def _on_message(self, message: dict[str, Any]) -> list[E2EEvent]:
        conversation_id = str(message.get("conversation_id"))
        if message.get("content_type") == "chatd/system":
            self.machine.on_system_entry(message)
            body = message.get("body")
            if isinstance(body, dict) and body.get("event") in _MEMBERSHIP_EVENTS:
                self._conversations.pop(conversation_id, None)
            self.machine.save()
            return [message]
        if message.get("content_type") not in ENCRYPTED_TYPES:
            return [message]
        seq = message.get("seq")
        if isinstance(seq, int):
            handled = self.machine.handled
            if seq <= handled.get(conversation_id, 0):
                return []  # delivered again after a reconnect: handled already
            handled[conversation_id] = seq
        return [await self._decrypt(message)]

    async def decrypt(self, message: dict[str, Any]) -> Decrypted | Undecryptable:
        """One message (live, or from `history`): its content, or why not."""
        async with self._lock:
            return await self._decrypt(message)

    async def _decrypt(self, message: dict[str, Any]) -> Decrypted | Undecryptable:
        sender_key = self.machine.sender_key_of(message)
        if sender_key == self.machine.identity.curve25519:
            sent = self._sent.get((str(message.get("conversation_id")),
                                   str(message.get("client_msg_id"))))
            if sent is None:
                return Undecryptable(message, "sent by this device (its text is not kept)",
                                     False)
            return Decrypted(str(message.get("conversation_id")), int(message["seq"]),
                             self.machine.user_id, self.machine.device_id, sent, message)
        if sender_key is not None and not self.machine.sender_known(message):
            await self.refresh_devices([str(message.get("sender_id"))])
        try:
            decrypted = self.machine.decrypt(message)
        except DecryptionError as exc:
            if exc.retryable:
                self.machine.keep(message)
            self.machine.save()
            return Undecryptable(message, str(exc), exc.retryable)
        self.machine.save()
        return decrypted

    async def _on_to_device(self, event: dict[str, Any], live: LiveConnection | None,
                            ) -> list[E2EEvent]:
        out: list[E2EEvent] = []
        sender = event.get("sender_user_id")
        if event.get("message_type") == wire.TO_DEVICE_OLM and sender is not None:
            try:
                try:
                    session_id = self.machine.receive_to_device(event)
                except MissingKeys:  # a device we have not seen yet: ask, then again
                    await self.refresh_devices([str(sender)])
                    session_id = self.machine.receive_to_device(event)
            except DecryptionError as exc:
                out.append(Undecryptable(event, str(exc), False))
            else:
                if session_id is not None:
                    out.extend(self.machine.retry(session_id))
        elif event.get("message_type") == wire.TO_DEVICE_SEALED and sender is not None:
            # The server queues `sealed` with no sender only: one naming a sender came
            # from elsewhere (an old server's POST /to_device); dropped, as it may pass
            # as sealed. Acknowledged all the same, as acks are cumulative.
            pass
        elif event.get("message_type") == wire.TO_DEVICE_SEALED:
            try:
                try:
                    out.append(await self._open_sealed(event))
                except sealed.UnknownSender as missing:
                    # The certificate's device is not known yet: its user's devices,
                    # then once more (the certificate names the user).
                    await self.refresh_devices([missing.user_id])
                    out.append(await self._open_sealed(event))
            except DecryptionError as exc:
                out.append(Undecryptable(event, str(exc), False))
        else:
            # Not the SDK's (an application's own type): the
            # application gets it as it came. Acknowledged all the same, as acks are
            # cumulative (`up_to`).
            out.append(event)
        self.machine.save()
        if live is not None and isinstance(event.get("id"), int):
            await live.ack_to_device(event["id"])
        return out
