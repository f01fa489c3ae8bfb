"""Real ciphertext for the `e2e` variants of `direct` and `group`, made with vodozemac.

The driver sets the sessions up before the measured phase (`olm_pairs`, `megolm_group`)
and hands each socket its pickled sessions in its spec; the worker opens them
(`SocketCipher`) and, live, encrypts every body it sends and decrypts every body it gets,
timing each call in thread CPU time (the worker is one thread, so that is the CPU the
crypto cost it).

- **Direct (Olm):** one session per pair of devices. The driver exchanges a pre-key
  message and a reply before the phase, so every measured message is a normal Olm
  message (what a conversation past its first message sends).
- **Group (Megolm):** one outbound session per sender, its key given to every other
  member before the phase (in a client, over Olm to-device messages).

Bodies have the SDK's envelope (`chatd.e2e.wire`): msgpack maps `{v, sender_key,
sender_device_id, ciphertexts: {recipient key: [olm type, ciphertext]}}` as
`application/vnd.chatd.olm`, `{v, sender_key, sender_device_id, session_id, ciphertext}`
as `application/vnd.chatd.megolm`. The plaintext is the plain variant's body (`T<µs> ` +
100 bytes of padding), so the latency stamp arrives through the decryption; the SDK's
own plaintexts also name sender, recipient and conversation (some 100 to 150 bytes more).
"""

from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack
import vodozemac

OLM = "application/vnd.chatd.olm"
MEGOLM = "application/vnd.chatd.megolm"
DEVICE_ID = "253168259849781248"  # a device id's size: the envelope names the sender's


def new_pickle_key() -> str:
    """The key sessions are pickled under on their way to the workers (hex, 32 bytes)."""
    return os.urandom(32).hex()


def olm_pairs(count: int, pickle_key: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """`count` established Olm sessions: (sender's spec, receiver's spec) each, for
    `SocketCipher.from_spec`."""
    key = bytes.fromhex(pickle_key)
    pairs = []
    for _ in range(count):
        alice, bob = vodozemac.Account(), vodozemac.Account()
        bob.generate_one_time_keys(1)
        [one_time_key] = bob.one_time_keys.values()
        bob.mark_keys_as_published()
        outbound = alice.create_outbound_session(bob.curve25519_key, one_time_key)
        kind, ciphertext = outbound.encrypt(b"hello").to_parts()
        pre_key = vodozemac.AnyOlmMessage.from_parts(kind, ciphertext).to_pre_key()
        assert pre_key is not None
        inbound, _ = bob.create_inbound_session(alice.curve25519_key, pre_key)
        # Bob's reply is what turns Alice's later messages into normal (type 1) ones.
        kind, ciphertext = inbound.encrypt(b"hi").to_parts()
        outbound.decrypt(vodozemac.AnyOlmMessage.from_parts(kind, ciphertext))
        alice_key, bob_key = alice.curve25519_key.to_base64(), bob.curve25519_key.to_base64()
        pairs.append(({"olm": outbound.pickle(key), "key": alice_key, "peer_key": bob_key},
                      {"olm": inbound.pickle(key), "key": bob_key, "peer_key": alice_key}))
    return pairs


def megolm_group(senders: int, pickle_key: str) -> list[tuple[dict[str, Any], str]]:
    """One outbound Megolm session per sender: (its spec, its session key) each."""
    key = bytes.fromhex(pickle_key)
    sessions = []
    for _ in range(senders):
        session = vodozemac.GroupSession()
        sender_key = vodozemac.Account().curve25519_key.to_base64()
        sessions.append(({"megolm_out": session.pickle(key), "key": sender_key},
                         session.session_key.to_base64()))
    return sessions


class CipherError(Exception):
    """A body that does not decrypt."""


@dataclass
class SocketCipher:
    """One socket's sessions, and what their crypto cost (thread CPU, ns)."""

    olm: Any = None
    megolm_out: Any = None
    #: This device's curve25519 key, and (Olm) the peer's.
    key: str = ""
    peer_key: str = ""
    megolm_in: dict[str, Any] = field(default_factory=dict)
    encrypt_ns: int = 0
    encrypts: int = 0
    decrypt_ns: int = 0
    decrypts: int = 0
    #: Base64 body characters sent (what the server stores and relays).
    body_chars: int = 0

    @classmethod
    def from_spec(cls, spec: dict[str, Any], pickle_key: str) -> SocketCipher:
        key = bytes.fromhex(pickle_key)
        cipher = cls(key=spec.get("key", ""), peer_key=spec.get("peer_key", ""))
        if "olm" in spec:
            cipher.olm = vodozemac.Session.from_pickle(spec["olm"], key)
        if "megolm_out" in spec:
            cipher.megolm_out = vodozemac.GroupSession.from_pickle(spec["megolm_out"], key)
        for session_key in spec.get("megolm_in", []):
            inbound = vodozemac.InboundGroupSession(vodozemac.SessionKey(session_key))
            cipher.megolm_in[inbound.session_id] = inbound
        return cipher

    def encrypt(self, text: str) -> tuple[str, str]:
        """(content type, base64 body) of `text`, encrypted."""
        began = time.thread_time_ns()
        if self.megolm_out is not None:
            message = self.megolm_out.encrypt(text.encode())
            body = msgpack.packb({
                "v": 1, "sender_key": self.key, "sender_device_id": DEVICE_ID,
                "session_id": self.megolm_out.session_id, "ciphertext": message.to_bytes()})
            content_type = MEGOLM
        elif self.olm is not None:
            kind, ciphertext = self.olm.encrypt(text.encode()).to_parts()
            body = msgpack.packb({
                "v": 1, "sender_key": self.key, "sender_device_id": DEVICE_ID,
                "ciphertexts": {self.peer_key: [kind, ciphertext]}})
            content_type = OLM
        else:
            raise CipherError("this socket has no outbound session")
        encoded = base64.b64encode(body).decode()
        self.encrypt_ns += time.thread_time_ns() - began
        self.encrypts += 1
        self.body_chars += len(encoded)
        return content_type, encoded

    def decrypt(self, content_type: str, body: str) -> str:
        began = time.thread_time_ns()
        try:
            envelope = msgpack.unpackb(base64.b64decode(body))
            if content_type == MEGOLM:
                inbound = self.megolm_in.get(envelope["session_id"])
                if inbound is None:
                    raise CipherError("no inbound Megolm session for this body")
                plaintext: bytes = inbound.decrypt(
                    vodozemac.MegolmMessage.from_bytes(envelope["ciphertext"])).plaintext
            elif content_type == OLM and self.olm is not None:
                kind, ciphertext = envelope["ciphertexts"][self.key]
                plaintext = self.olm.decrypt(vodozemac.AnyOlmMessage.from_parts(
                    kind, ciphertext))
            else:
                raise CipherError(f"no session for {content_type}")
        except CipherError:
            raise
        except Exception as error:  # vodozemac's exceptions share no base class
            raise CipherError(f"{type(error).__name__}: {error}") from None
        finally:
            self.decrypt_ns += time.thread_time_ns() - began
            self.decrypts += 1
        return plaintext.decode()


def hot_costs(kind: str, text: str, rounds: int = 2000) -> dict[str, float]:
    """Encryption and decryption of `text` back to back, in this process (warm caches, no
    other load): the floor under what the workers measure in the run, where each call
    comes cold, between the socket work of its own and of the other processes."""
    spec_out: dict[str, Any]
    spec_in: dict[str, Any]
    if kind == "olm":
        [(spec_out, spec_in)] = olm_pairs(1, key := new_pickle_key())
    else:
        [(spec_out, session_key)] = megolm_group(1, key := new_pickle_key())
        spec_in = {"megolm_in": [session_key]}
    out, into = SocketCipher.from_spec(spec_out, key), SocketCipher.from_spec(spec_in, key)
    bodies = [out.encrypt(text) for _ in range(rounds)]
    for content_type, body in bodies:
        into.decrypt(content_type, body)
    return {f"hot_{kind}_encrypt_us": out.encrypt_ns / out.encrypts / 1000,
            f"hot_{kind}_decrypt_us": into.decrypt_ns / into.decrypts / 1000}
