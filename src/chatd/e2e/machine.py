"""The SDK's crypto state machine, sans-I/O: an account, its Olm and Megolm sessions, the
trust store and the undecryptable messages kept for later, loaded from and saved to a
`StateStore`. It turns contents into bodies and messages back into contents; fetching
keys, claiming, sending and acknowledging are the caller's (`chatd.e2e.client`).

The caller's duties, in order: know the devices (`observe_devices`) before encrypting to
them or decrypting from them; open sessions with claimed keys (`start_session`) for the
devices `needs_session` names; `save()` after every call that encrypts or decrypts and
before sending or acknowledging anything (a ratchet step that is sent but not saved would
be reused after a crash, and a consumed one-time key that is acknowledged but not saved
would lose the session).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import nacl.public
import vodozemac

from chatd.e2e import sealed, wire
from chatd.e2e.account import DeviceAccount, IdentityKeys, verify_signature
from chatd.e2e.errors import (
    DecryptionError,
    ForgedMessage,
    MissingKeys,
    UntrustedKeys,
)
from chatd.e2e.megolm import Inbound, MegolmSessions, Outbound, rotation_due_after
from chatd.e2e.olm import OlmSessions
from chatd.e2e.store import StateStore
from chatd.e2e.trust import DeviceKeys, KeyChange, TrustStore, safety_number

ENCRYPTED_TYPES = frozenset({wire.OLM_CONTENT_TYPE, wire.MEGOLM_CONTENT_TYPE})
#: Undecryptable messages kept for a retry, at most (the oldest go first).
MAX_PENDING = 1000


@dataclass(frozen=True)
class Decrypted:
    conversation_id: str
    seq: int
    sender_id: str
    sender_device_id: str
    content: dict[str, Any]
    #: The message as the server sent it (its body is the ciphertext).
    message: dict[str, Any]


def device_label(device: DeviceKeys) -> str:
    return f"{device.user_id}/{device.device_id}"


def message_body(message: dict[str, Any]) -> bytes:
    """A message's body as bytes (JSON connections carry base64, msgpack ones bytes)."""
    body = message.get("body")
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        try:
            return base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise DecryptionError("the body is not base64") from None
    raise DecryptionError("the message has no opaque body")


class E2EMachine:
    def __init__(self, store: StateStore, user_id: str, device_id: str,
                 account: DeviceAccount) -> None:
        self.store = store
        self.user_id = user_id
        self.device_id = device_id
        self.account = account
        self.olm = OlmSessions(account)
        self.megolm = MegolmSessions()
        self.trust = TrustStore()
        #: "conversation_id:seq" -> a message we could not decrypt yet, and its session.
        self.pending: dict[str, tuple[str, dict[str, Any]]] = {}
        #: conversation id -> the highest seq handled from the live stream (a message
        #: delivered again, unacknowledged before a crash, is not decrypted twice: an Olm
        #: message cannot be).
        self.handled: dict[str, int] = {}
        self.uploaded = False
        #: This device's sealed-sender key (chatd.e2e.sealed: why not the identity key).
        self.sealed_key = nacl.public.PrivateKey.generate()
        #: Whether the directory has it (a device made before it existed uploads it once).
        self.sealed_published = False

    # -- state ---------------------------------------------------------------------------

    @classmethod
    def load(cls, store: StateStore, user_id: str, device_id: str) -> E2EMachine:
        """This device's state from `store`, or a new account when there is none. A store
        made for another user or device is refused: an account belongs to one device."""
        key = store.pickle_key
        owner = store.get("owner")
        if owner is not None and owner.decode() != f"{user_id}/{device_id}":
            raise UntrustedKeys(f"this E2E state belongs to device {owner.decode()}, not "
                                f"{user_id}/{device_id}: use a state directory per device")
        pickle = store.get("account")
        account = DeviceAccount.from_pickle(pickle.decode(), key) if pickle \
            else DeviceAccount.new()
        machine = cls(store, user_id, device_id, account)
        machine.uploaded = store.get("uploaded") == b"1"
        if (sealed_seed := store.get(sealed.RECORD)) is not None:
            machine.sealed_key = nacl.public.PrivateKey(sealed_seed)
        else:
            # Saved before its public half can be uploaded (by `save()` below or the
            # caller's first one): written now, once.
            store.put(sealed.RECORD, bytes(machine.sealed_key))
        machine.sealed_published = store.get("sealed_published") == b"1"
        for name in store.names("olm/"):
            pickles = msgpack.unpackb(store.get(name) or b"", raw=False)
            machine.olm.load_peer(name[4:], [(p, c) for p, c in pickles], key)
        for name in store.names("megolm_out/"):
            out = Outbound.from_bytes(store.get(name) or b"", key)
            machine.megolm.outbound[out.conversation_id] = out
        for name in store.names("megolm_in/"):
            machine.megolm.inbound[name[10:]] = Inbound.from_bytes(store.get(name) or b"",
                                                                    key)
        if handled := store.get("handled"):
            machine.handled = msgpack.unpackb(handled, raw=False)
        if trust := store.get("trust"):
            machine.trust = TrustStore.from_bytes(trust)
        for name in store.names("pending/"):
            session_id, message = msgpack.unpackb(store.get(name) or b"", raw=False)
            machine.pending[name[8:]] = (session_id, message)
        if owner is None:
            store.put("owner", f"{user_id}/{device_id}".encode())
            machine.save()
        return machine

    def save(self) -> None:
        """Write what changed since the last save."""
        key = self.store.pickle_key
        if self.account.dirty:
            self.store.put("account", self.account.pickle(key).encode())
            self.account.dirty = False
        self.store.put("uploaded", b"1" if self.uploaded else b"0")
        self.store.put("sealed_published", b"1" if self.sealed_published else b"0")
        for peer in self.olm.dirty:
            self.store.put(f"olm/{peer}", msgpack.packb(self.olm.pickle_peer(peer, key)))
        self.olm.dirty.clear()
        for conversation_id in self.megolm.dirty_outbound:
            outbound = self.megolm.outbound.get(conversation_id)
            if outbound is None:
                self.store.delete(f"megolm_out/{conversation_id}")
            else:
                self.store.put(f"megolm_out/{conversation_id}", outbound.to_bytes(key))
        self.megolm.dirty_outbound.clear()
        for session_id in self.megolm.dirty_inbound:
            self.store.put(f"megolm_in/{session_id}",
                           self.megolm.inbound[session_id].to_bytes(key))
        self.megolm.dirty_inbound.clear()
        self.store.put("trust", self.trust.to_bytes())
        self.store.put("handled", msgpack.packb(self.handled))
        for name in self.store.names("pending/"):
            if name[8:] not in self.pending:
                self.store.delete(name)
        for ref, (session_id, message) in self.pending.items():
            self.store.put(f"pending/{ref}", msgpack.packb([session_id, message],
                                                           use_bin_type=True))

    @property
    def identity(self) -> IdentityKeys:
        return self.account.identity

    def me(self) -> DeviceKeys:
        identity = self.identity
        return DeviceKeys(self.user_id, self.device_id, identity.curve25519,
                          identity.ed25519)

    # -- keys and devices ----------------------------------------------------------------

    def observe_devices(self, user_id: str, devices: list[DeviceKeys]) -> list[KeyChange]:
        """A key query's answer for `user_id` (devices with bad identity signatures
        already dropped by the caller). Our own device is never in question."""
        if user_id == self.user_id:
            devices = [d for d in devices if d.device_id != self.device_id]
        return self.trust.observe(user_id, devices)

    def recipients(self, user_ids: list[str]) -> list[DeviceKeys]:
        """The trusted devices of these users, this device left out."""
        return [device for user_id in sorted(set(user_ids))
                for device in self.trust.trusted(user_id)
                if (device.user_id, device.device_id) != (self.user_id, self.device_id)]

    def needs_session(self, devices: list[DeviceKeys]) -> list[DeviceKeys]:
        return [device for device in devices if not self.olm.has_session(device.curve25519)]

    def start_session(self, device: DeviceKeys, key: str, signature: str) -> None:
        """Open an Olm session to `device` from a key `/keys/claim` gave for it, once its
        signature by the device's ed25519 key checks out (the server cannot forge it)."""
        if not verify_signature(device.ed25519, key, signature):
            raise UntrustedKeys(f"the one-time key claimed for {device_label(device)} "
                                f"is not signed by its identity key")
        try:
            self.olm.start(device.curve25519, key)
        except (vodozemac.KeyException, ValueError) as exc:
            raise UntrustedKeys(f"the keys of {device_label(device)} are not Curve25519 "
                                f"keys ({exc})") from None

    def safety_number(self, user_id: str) -> str:
        mine = [self.identity.ed25519] + [d.ed25519 for d in self.trust.trusted(self.user_id)]
        theirs = [d.ed25519 for d in self.trust.trusted(user_id)]
        return safety_number(self.user_id, mine, user_id, theirs)

    # -- encrypting ------------------------------------------------------------------------

    def _olm_payload(self, device: DeviceKeys, kind: str, fields: dict[str, Any]) -> bytes:
        identity = self.identity
        return wire.pack({"kind": kind, "sender_user_id": self.user_id,
                          "sender_device_id": self.device_id,
                          "sender_ed25519": identity.ed25519,
                          "recipient_user_id": device.user_id,
                          "recipient_ed25519": device.ed25519, **fields})

    def encrypt_direct(self, conversation_id: str, content: dict[str, Any],
                       devices: list[DeviceKeys]) -> bytes:
        """An `application/vnd.chatd.olm` body: `content` for each of `devices` (every
        one needs a session: `needs_session`)."""
        ciphertexts = {device.curve25519: self.olm.encrypt(device.curve25519, self._olm_payload(
            device, wire.MESSAGE, {"conversation_id": conversation_id, "content": content}))
            for device in devices}
        return wire.OlmBody(self.identity.curve25519, self.device_id, ciphertexts).to_bytes()

    def group_session(self, conversation_id: str, now_ms: int,
                      devices: list[DeviceKeys]) -> Outbound:
        """The outbound session for a message to `devices` now: a new one when the current
        one is due (100 messages, a week) or was shared with a device no longer among
        them (a member or device gone)."""
        outbound = self.megolm.current(conversation_id, now_ms)
        if outbound is not None and outbound.shared_with - {
                device_label(d) for d in devices}:
            outbound = None
        if outbound is None:
            identity = self.identity
            outbound = self.megolm.new_outbound(
                conversation_id, now_ms, my_user_id=self.user_id,
                my_device_id=self.device_id, my_key=identity.curve25519)
        return outbound

    def room_key_messages(self, outbound: Outbound, devices: list[DeviceKeys],
                          ) -> dict[str, dict[str, dict[str, Any]]]:
        """The `POST /to_device` messages that share `outbound`'s key (from its current
        index) with those of `devices` that lack it; `mark_shared` once sent."""
        key = outbound.session.session_key.to_base64()
        messages: dict[str, dict[str, dict[str, Any]]] = {}
        for device in devices:
            if device_label(device) in outbound.shared_with:
                continue
            ciphertext = self.olm.encrypt(device.curve25519, self._olm_payload(
                device, wire.ROOM_KEY, {"conversation_id": outbound.conversation_id,
                                        "session_id": outbound.session.session_id,
                                        "session_key": key}))
            messages.setdefault(device.user_id, {})[device.device_id] = {
                "type": wire.TO_DEVICE_OLM, "content": wire.to_device_content(
                    self.identity.curve25519, {device.curve25519: ciphertext})}
        return messages

    def mark_shared(self, outbound: Outbound, devices: list[DeviceKeys]) -> None:
        outbound.shared_with.update(device_label(d) for d in devices)
        self.megolm.dirty_outbound.add(outbound.conversation_id)

    def encrypt_group(self, outbound: Outbound, content: dict[str, Any]) -> bytes:
        """An `application/vnd.chatd.megolm` body."""
        ciphertext = self.megolm.encrypt(outbound, wire.pack(
            {"conversation_id": outbound.conversation_id, "content": content}))
        return wire.MegolmBody(self.identity.curve25519, self.device_id,
                               outbound.session.session_id, ciphertext).to_bytes()

    # -- decrypting ------------------------------------------------------------------------

    def sender_key_of(self, message: dict[str, Any]) -> str | None:
        """The curve25519 key an encrypted message claims to come from (so the caller can
        query its owner's devices first), or None."""
        try:
            body = message_body(message)
            if message.get("content_type") == wire.OLM_CONTENT_TYPE:
                return wire.OlmBody.from_bytes(body).sender_key
            if message.get("content_type") == wire.MEGOLM_CONTENT_TYPE:
                return wire.MegolmBody.from_bytes(body).sender_key
        except DecryptionError:
            return None
        return None

    def sender_known(self, message: dict[str, Any]) -> bool:
        """Whether we hold keys for the device an encrypted message names (else the
        caller queries its sender's devices first)."""
        try:
            body = message_body(message)
            if message.get("content_type") == wire.OLM_CONTENT_TYPE:
                device_id = wire.OlmBody.from_bytes(body).sender_device_id
            elif message.get("content_type") == wire.MEGOLM_CONTENT_TYPE:
                device_id = wire.MegolmBody.from_bytes(body).sender_device_id
            else:
                return True
        except DecryptionError:
            return True
        return self.trust.device(str(message.get("sender_id")), device_id) is not None

    def _sender_device(self, sender_key: str, user_id: str, device_id: str) -> DeviceKeys:
        # By the (user, device) the message names, not by its key: another device may
        # have republished this key (a copy; trust.py), and must not shadow the genuine.
        device = self.trust.device(user_id, device_id)
        if device is None:
            # The caller queried the named user first (`sender_known`): a key we know only
            # as another device's is not theirs.
            if self.trust.knows_key(sender_key):
                raise ForgedMessage(f"device key {sender_key} is not {user_id}/{device_id}'s")
            raise MissingKeys(f"device key {sender_key} is not a known device of {user_id}")
        if device.curve25519 != sender_key or (user_id, device_id) in self.trust.pending:
            raise ForgedMessage(f"device key {sender_key} is not {user_id}/{device_id}'s")
        return device

    def _open_olm(self, body: wire.OlmBody, sender_user_id: str, kind: str,
                  ) -> dict[str, Any]:
        mine = body.ciphertexts.get(self.identity.curve25519)
        if mine is None:
            raise DecryptionError("not encrypted for this device")
        device = self._sender_device(body.sender_key, sender_user_id, body.sender_device_id)
        payload = wire.unpack_map(self.olm.decrypt(body.sender_key, *mine), "an Olm payload")
        if (payload.get("kind"), payload.get("sender_user_id"),
                payload.get("sender_device_id"), payload.get("sender_ed25519"),
                payload.get("recipient_user_id"), payload.get("recipient_ed25519")) != (
                kind, device.user_id, device.device_id, device.ed25519, self.user_id,
                self.identity.ed25519):
            raise ForgedMessage("the Olm payload's sender or recipient is not who carried it")
        return payload

    def decrypt(self, message: dict[str, Any]) -> Decrypted:
        """A conversation message's content; `DecryptionError` when it cannot be read
        (see `keep`, for the retryable ones)."""
        conversation_id = str(message.get("conversation_id"))
        sender_id = str(message.get("sender_id"))
        seq = message.get("seq")
        if not isinstance(seq, int):
            raise DecryptionError("the message has no seq")
        content_type = message.get("content_type")
        body = message_body(message)
        if content_type == wire.OLM_CONTENT_TYPE:
            olm_body = wire.OlmBody.from_bytes(body)
            payload = self._open_olm(olm_body, sender_id, wire.MESSAGE)
            device_id = olm_body.sender_device_id
        elif content_type == wire.MEGOLM_CONTENT_TYPE:
            megolm_body = wire.MegolmBody.from_bytes(body)
            plaintext, inbound = self.megolm.decrypt(
                megolm_body.session_id, megolm_body.ciphertext,
                conversation_id=conversation_id, sender_user_id=sender_id,
                ref=f"{conversation_id}:{seq}")
            if (inbound.sender_key, inbound.sender_device_id) != (
                    megolm_body.sender_key, megolm_body.sender_device_id):
                raise ForgedMessage("the Megolm session is another device's")
            payload = wire.unpack_map(plaintext, "a Megolm payload")
            device_id = inbound.sender_device_id
        else:
            raise DecryptionError(f"{content_type} is not an encrypted content type")
        content = payload.get("content")
        if payload.get("conversation_id") != conversation_id or not isinstance(content, dict):
            raise ForgedMessage("the plaintext belongs to another conversation")
        return Decrypted(conversation_id, seq, sender_id, device_id, content, message)

    # -- sealed sender --------------------------------------------------------------------

    def sealed_key_payload(self) -> dict[str, str]:
        """`identity.sealed_key` of `/keys/upload`: the public half, signed like a
        one-time key (the ed25519 signature of its base64 text)."""
        key = sealed.public_key_text(self.sealed_key)
        return {"key": key, "signature": self.account.sign(key)}

    def encrypt_sealed(self, device: DeviceKeys, content: dict[str, Any]) -> bytes:
        """The Olm body of a sealed message to `device` (it needs a session)."""
        ciphertext = self.olm.encrypt(device.curve25519, self._olm_payload(
            device, wire.SEALED_MESSAGE, {"content": content}))
        return wire.OlmBody(self.identity.curve25519, self.device_id,
                            {device.curve25519: ciphertext}).to_bytes()

    def open_sealed(self, event: dict[str, Any], server_keys: dict[str, str],
                    now_ms: int) -> Decrypted:
        """A `sealed` to-device frame: the envelope opened with the sealed-sender key,
        its certificate checked (the server's signature, expiry), the Olm message's
        sender key matched against the certificate's identity key, then decrypted.
        `MissingKeys` when the certificate's device is not known yet (query, retry);
        `CertificateRejected` or another `DecryptionError` otherwise."""
        content = event.get("content")
        envelope_text = content.get("envelope") if isinstance(content, dict) else None
        if not isinstance(envelope_text, str):
            raise DecryptionError("a sealed frame carries an envelope")
        try:
            envelope = base64.b64decode(envelope_text, validate=True)
        except (binascii.Error, ValueError):
            raise DecryptionError("the envelope is not base64") from None
        opened = sealed.open_envelope(self.sealed_key, envelope, server_keys, now_ms)
        body = wire.OlmBody.from_bytes(opened.message)
        if (body.sender_key, body.sender_device_id) != (opened.identity_key,
                                                        opened.device_id):
            raise sealed.CertificateRejected(
                "the certificate is not for the identity key the Olm message is from")
        if self.trust.device(opened.user_id, opened.device_id) is None:
            raise sealed.UnknownSender(opened.user_id)
        payload = self._open_olm(body, opened.user_id, wire.SEALED_MESSAGE)
        message_content = payload.get("content")
        if not isinstance(message_content, dict):
            raise ForgedMessage("a sealed message carries a content")
        seq = event.get("id")
        return Decrypted("", seq if isinstance(seq, int) else 0, opened.user_id,
                         opened.device_id, message_content, event)

    def keep(self, message: dict[str, Any]) -> None:
        """Keep a message that failed with a retryable error, to decrypt once its Megolm
        session arrives (`receive_to_device` answers its id)."""
        try:
            session_id = wire.MegolmBody.from_bytes(message_body(message)).session_id \
                if message.get("content_type") == wire.MEGOLM_CONTENT_TYPE else ""
        except DecryptionError:
            return
        self.pending[f"{message.get('conversation_id')}:{message.get('seq')}"] = (
            session_id, message)
        while len(self.pending) > MAX_PENDING:
            del self.pending[next(iter(self.pending))]

    def retry(self, session_id: str | None = None,
              on_error: Callable[[dict[str, Any], DecryptionError], None] | None = None,
              ) -> list[Decrypted]:
        """Decrypt the kept messages of `session_id` (all kept ones: None), oldest first.
        Those that decrypt leave the pending set; so do those that fail for good."""
        done: list[Decrypted] = []
        for ref, (kept_session, message) in list(self.pending.items()):
            if session_id is not None and kept_session != session_id:
                continue
            try:
                done.append(self.decrypt(message))
            except DecryptionError as exc:
                if exc.retryable:
                    continue
                if on_error is not None:
                    on_error(message, exc)
            del self.pending[ref]
        return done

    def receive_to_device(self, event: dict[str, Any]) -> str | None:
        """A `to_device` frame; the id of the Megolm session it shared with us, if any."""
        if event.get("message_type") != wire.TO_DEVICE_OLM:
            return None
        body = wire.parse_to_device_content(event.get("content"))
        sender_user_id = str(event.get("sender_user_id"))
        sender_device_id = str(event.get("sender_device_id"))
        body = wire.OlmBody(body.sender_key, sender_device_id, body.ciphertexts)
        payload = self._open_olm(body, sender_user_id, wire.ROOM_KEY)
        conversation_id, session_key = payload.get("conversation_id"), payload.get(
            "session_key")
        if not (isinstance(conversation_id, str) and isinstance(session_key, str)):
            raise DecryptionError("a room key names its conversation and session key")
        return self.megolm.add_inbound(conversation_id, session_key,
                                       sender_user_id=sender_user_id,
                                       sender_device_id=sender_device_id,
                                       sender_key=body.sender_key)

    def on_system_entry(self, message: dict[str, Any]) -> None:
        """A `chatd/system` log entry: a member who left or was removed ends our outbound
        session there (the next message starts a new one, not shared with them)."""
        if message.get("content_type") == "chatd/system" and rotation_due_after(
                message.get("body")):
            self.megolm.rotate(str(message.get("conversation_id")))
