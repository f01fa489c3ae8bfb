"""Olm sessions, one set per peer device (keyed by its curve25519 identity key).

Rules (the Double Ratchet's, as vodozemac implements them):
- The first message of a session we start is a pre-key message (type 0); until the peer
  answers, every message we send on it stays type 0, so any of them can open the session.
- A pre-key message for a session we do not hold creates an inbound session; it consumes
  the one-time key it names, so the session must be saved before the message is
  acknowledged (the caller's job: `dirty` says which peers changed).
- Both sides may start a session at the same moment; each keeps both, newest first, and
  sends on the newest one that has received a message (the one both sides know), as
  libolm's users do. A few old sessions are kept for late messages.
"""

from __future__ import annotations

import vodozemac

from chatd.e2e.account import DeviceAccount
from chatd.e2e.errors import DecryptionError, MissingKeys

#: Sessions kept per peer device: enough for crossed starts and late messages.
_KEEP = 5

PRE_KEY = 0
NORMAL = 1


class OlmSessions:
    def __init__(self, account: DeviceAccount) -> None:
        self.account = account
        #: curve25519 key of the peer -> sessions, newest first.
        self.sessions: dict[str, list[vodozemac.Session]] = {}
        #: session ids that have decrypted at least one message (the peer knows them).
        self.confirmed: set[str] = set()
        #: peers whose sessions changed since the caller last saved them.
        self.dirty: set[str] = set()

    def has_session(self, peer_key: str) -> bool:
        return bool(self.sessions.get(peer_key))

    def start(self, peer_key: str, one_time_key: str) -> None:
        """A new outbound session to `peer_key` from a claimed (checked) one-time key."""
        session = self.account.olm.create_outbound_session(
            vodozemac.Curve25519PublicKey.from_base64(peer_key),
            vodozemac.Curve25519PublicKey.from_base64(one_time_key))
        self._add(peer_key, session)

    def encrypt(self, peer_key: str, plaintext: bytes) -> tuple[int, bytes]:
        sessions = self.sessions.get(peer_key)
        if not sessions:
            raise MissingKeys(f"no Olm session with device key {peer_key}")
        session = next((s for s in sessions if s.session_id in self.confirmed), sessions[0])
        message_type, ciphertext = session.encrypt(plaintext).to_parts()
        self.dirty.add(peer_key)
        return message_type, ciphertext

    def decrypt(self, peer_key: str, message_type: int, ciphertext: bytes) -> bytes:
        try:
            message = vodozemac.AnyOlmMessage.from_parts(message_type, ciphertext)
        except (vodozemac.DecodeException, ValueError) as exc:
            raise DecryptionError(f"not an Olm message ({exc})") from None
        pre_key = message.to_pre_key() if message_type == PRE_KEY else None
        for session in self.sessions.get(peer_key, []):
            if pre_key is not None and not session.session_matches(pre_key):
                continue
            try:
                plaintext = session.decrypt(message)
            except vodozemac.OlmDecryptionException:
                if pre_key is not None:
                    raise DecryptionError("the Olm pre-key message does not decrypt on "
                                          "its own session (a duplicate?)") from None
                continue
            self._confirm(peer_key, session)
            return plaintext
        if pre_key is None:
            raise DecryptionError(f"no Olm session with {peer_key} decrypts this message")
        try:
            session, plaintext = self.account.olm.create_inbound_session(
                vodozemac.Curve25519PublicKey.from_base64(peer_key), pre_key)
        except (vodozemac.SessionCreationException, vodozemac.KeyException) as exc:
            raise DecryptionError(f"cannot open an Olm session from this pre-key message "
                                  f"({exc})") from None
        self.account.dirty = True  # the one-time key it used is gone
        self._add(peer_key, session)
        self._confirm(peer_key, session)
        return plaintext

    def _add(self, peer_key: str, session: vodozemac.Session) -> None:
        sessions = self.sessions.setdefault(peer_key, [])
        sessions.insert(0, session)
        for dropped in sessions[_KEEP:]:
            self.confirmed.discard(dropped.session_id)
        del sessions[_KEEP:]
        self.dirty.add(peer_key)

    def _confirm(self, peer_key: str, session: vodozemac.Session) -> None:
        self.confirmed.add(session.session_id)
        sessions = self.sessions[peer_key]
        # The session that last worked is the one to send on.
        sessions.remove(session)
        sessions.insert(0, session)
        self.dirty.add(peer_key)

    # -- persistence (the caller stores the bytes) -------------------------------------

    def pickle_peer(self, peer_key: str, key: bytes) -> list[tuple[str, bool]]:
        return [(s.pickle(key), s.session_id in self.confirmed)
                for s in self.sessions.get(peer_key, [])]

    def load_peer(self, peer_key: str, pickles: list[tuple[str, bool]], key: bytes) -> None:
        sessions = []
        for pickle, confirmed in pickles:
            session = vodozemac.Session.from_pickle(pickle, key)
            sessions.append(session)
            if confirmed:
                self.confirmed.add(session.session_id)
        self.sessions[peer_key] = sessions
