"""Sealed sender (Signal's): deliver a 1:1 message without the server learning who sent it.

Three parts (docs/e2e.md, "Sealed sender"):

- **Sender certificates.** `GET /certificate/sender` gives an authenticated device a
  short-lived certificate {user_id, device_id, identity_key (the device's curve25519 key
  from the key directory), expires, key_id}, signed with this shard's Ed25519 key. The
  sender puts it inside the sealed envelope, so the *recipient* learns and checks who
  sent it; the server that relays the envelope never sees it.
- **Access keys.** Each user stores a 16-byte unidentified access key on their home
  (`PUT /me/access_key`) and gives it to their contacts inside encrypted messages. A
  sealed send proves it may reach the user with the key instead of a login, so the
  server can refuse strangers without knowing who the sender is.
- **Sealed send.** `POST /sealed/send` carries no token, only the recipient's access key
  in a header and an envelope (a sealed box to the recipient device's sealed-sender key).
  The recipient's home checks the key in constant time and queues the envelope on the
  device's to-device queue as type `sealed`, with no sender fields. Nothing records who
  sent it: no sender id exists at any point of the path.

**Keys: one per shard.** Each shard makes its own Ed25519 key on first start and keeps
its seed in its database (the `meta` family, under its data directory, so backups carry
it); `GET /certificate/server_keys` lists every shard's public key by `key_id`, and a
certificate names the key that signed it. Why not one key for the cluster: a shared key
would have to be derived from the cluster secret (as media links are) or copied to every
shard, so anyone holding the mesh secret could sign certificates, and changing that
secret would invalidate every certificate in flight; a shard's own key never leaves its
disk, and a compromised shard can be dropped from the list alone. Clients verify against
the published list (fetched once and cached; fetched again for an unknown `key_id`).

Wire forms (mesh requests):

    cert.server_key {} -> [key_id, public key (32 bytes)]
    home.set_access_key {user_id, access_key (16 bytes)} -> None
    home.sealed_put {user_id, device_id, access_key, envelope (bytes)} -> None
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

import nacl.signing

from chatd.config import SealedSenderConfig
from chatd.domain.models import Session
from chatd.errors import BadRequest, ChatdError, Conflict, NotFound, Unauthorized
from chatd.services import shard_calls
from chatd.services.clock import Clock
from chatd.services.commands import Commands
from chatd.services.peer_bodies import int_field as _int
from chatd.services.ratelimits import RateLimits
from chatd.services.routing import Router
from chatd.services.to_device import SEALED_TYPE, ToDeviceHome
from chatd.storage import Batch, Store, claim_secret, records

#: An unidentified access key's length (Signal's).
ACCESS_KEY_BYTES = 16
#: The `meta` record holding this shard's certificate-signing seed.
SIGNING_SEED = "sealed_sender_signing_seed"
#: Compared against when the user has no key (or does not exist), so both answers cost
#: the same comparison as a wrong key.
_NO_KEY = bytes(ACCESS_KEY_BYTES)
_REFUSED = "the access key does not open this recipient's mailbox"

#: The device's curve25519 identity key (base64) from the key directory, or None when
#: it has uploaded none. The key directory is built in services/keys.py (branch
#: e2e-keys); services/context.py wires its lookup in.
IdentityKeyLookup = Callable[[int, int], Awaitable[str | None]]


def signing_key(store: Store) -> nacl.signing.SigningKey:
    """This shard's certificate key: made on first start, kept in its database."""
    return nacl.signing.SigningKey(claim_secret(store, SIGNING_SEED))


def key_id_of(public_key: bytes) -> str:
    """A key's name in certificates and the published list: its hash, so a shard whose
    data directory is replaced (a new key) never reuses the old key's name."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def certificate_bytes(fields: dict[str, Any]) -> bytes:
    """The exact bytes a certificate's signature covers: its fields as compact JSON with
    sorted keys (what clients verify, after base64-decoding `certificate`)."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


class SealedSender:
    """Certificates (any shard), access keys and sealed sends (routed to the home)."""

    def __init__(self, *, router: Router, store: Store, commands: Commands,
                 to_device: ToDeviceHome, ratelimits: RateLimits,
                 config: SealedSenderConfig, clock: Clock,
                 identity_key: IdentityKeyLookup) -> None:
        self._router = router
        self._store = store
        self._commands = commands
        self._to_device = to_device
        self._ratelimits = ratelimits
        self._config = config
        self._clock = clock
        self._identity_key = identity_key
        self._key = signing_key(store)
        self.public_key = bytes(self._key.verify_key)
        self.key_id = key_id_of(self.public_key)
        self.requests: dict[str, Callable[[dict[str, Any]], Any]] = {
            "cert.server_key": self._server_key_request,
            "home.set_access_key": self._set_access_key_request,
            "home.sealed_put": self._sealed_put_request,
        }

    # -- certificates -------------------------------------------------------------------------

    async def certificate(self, session: Session) -> dict[str, Any]:
        """A sender certificate for the session's device, signed by this shard."""
        identity_key = await self._identity_key(session.user_id, session.device_id)
        if identity_key is None:
            raise Conflict("this device has no identity key in the key directory; upload "
                           "its keys first (POST /keys/upload)", code="no_identity_key")
        fields = {"user_id": str(session.user_id), "device_id": str(session.device_id),
                  "identity_key": identity_key,
                  "expires": self._clock.now_ms() + int(self._config.certificate_ttl * 1000),
                  "key_id": self.key_id}
        signed = certificate_bytes(fields)
        return {**fields, "certificate": base64.b64encode(signed).decode(),
                "signature": base64.b64encode(self._key.sign(signed).signature).decode()}

    async def server_keys(self) -> tuple[dict[str, str], list[str]]:
        """Every shard's certificate key (key_id -> base64), and the shards that did not
        answer."""
        keys: dict[str, str] = {}
        unreachable: list[str] = []
        for shard in self._router.shards:
            try:
                key_id, public_key = await shard_calls.call(
                    self._router, self.requests, shard, "cert.server_key", {}, what="shard")
            except ChatdError:
                unreachable.append(shard)
                continue
            keys[str(key_id)] = base64.b64encode(bytes(public_key)).decode()
        return keys, unreachable

    def _server_key_request(self, _body: dict[str, Any]) -> list[Any]:
        return [self.key_id, self.public_key]

    # -- access keys --------------------------------------------------------------------------

    async def set_access_key(self, session: Session, access_key: bytes) -> None:
        if len(access_key) != ACCESS_KEY_BYTES:
            raise BadRequest(f"access_key: exactly {ACCESS_KEY_BYTES} bytes (base64)",
                             code="invalid_field")
        await shard_calls.call(self._router, self.requests,
                               self._router.home_of_user(session.user_id),
                               "home.set_access_key",
                               {"user_id": session.user_id, "access_key": access_key})

    async def _set_access_key_request(self, body: dict[str, Any]) -> None:
        user_id = _int(body, "user_id")
        access_key = _bytes(body, "access_key")
        if len(access_key) != ACCESS_KEY_BYTES:
            raise BadRequest("access_key: 16 bytes", code="malformed_command")

        def apply(batch: Batch) -> None:
            batch.put(records.ACCESS_KEYS, user_id, access_key)

        await self._commands.submit(apply)

    def _opens(self, user_id: int, given: bytes) -> bool:
        stored = self._store.get(records.ACCESS_KEYS, user_id)
        known = isinstance(stored, bytes) and len(stored) == ACCESS_KEY_BYTES
        # Always one constant-time comparison of 16 bytes, key or none.
        matches = hmac.compare_digest(stored if known else _NO_KEY, given)  # type: ignore[arg-type]
        return known and matches

    async def erase_user(self, user_id: int) -> None:
        """GDPR erasure (AccountAdmin.erase_hooks): the access key goes."""
        await self._commands.submit(lambda batch: batch.delete(records.ACCESS_KEYS, user_id))

    # -- sealed sends ---------------------------------------------------------------------------

    async def send(self, user_id: int, device_id: int, envelope: bytes, access_key: bytes,
                   address: str | None) -> None:
        """Queue `envelope` for the device, checked only by the recipient's access key.
        Rate limited per client address (`sealed_send`): there is no account."""
        self._ratelimits.take("sealed_send", address=address)
        _check_device(device_id)
        if len(access_key) != ACCESS_KEY_BYTES:
            raise Unauthorized(_REFUSED, code="unauthorized")
        await shard_calls.call(self._router, self.requests, self._router.home_of_user(user_id),
                               "home.sealed_put",
                               {"user_id": user_id, "device_id": device_id,
                                "access_key": access_key, "envelope": envelope})

    async def _sealed_put_request(self, body: dict[str, Any]) -> None:
        user_id = _int(body, "user_id")
        device_id = _int(body, "device_id")
        access_key = _bytes(body, "access_key")
        envelope = _bytes(body, "envelope")
        _check_device(device_id)
        # Unknown user, no key, wrong key: one answer, so it tells nothing.
        if len(access_key) != ACCESS_KEY_BYTES or not self._opens(user_id, access_key):
            raise Unauthorized(_REFUSED, code="unauthorized")
        content = {"envelope": base64.b64encode(envelope).decode()}
        # No sender (0, 0) and no txn: nothing of the sender is written anywhere.
        queued = await self._to_device.put(0, 0, "", [(user_id, device_id, SEALED_TYPE,
                                                       content)])
        if not queued:
            # Only someone holding the key learns this: the key's owner gave it to them.
            raise NotFound("the recipient has no such device", code="unknown_device")


def _check_device(device_id: int) -> None:
    """A sealed envelope is sealed to one device's key: device 0 (to-device's "every
    device") would queue it on all of them and fan one access-keyed send out."""
    if device_id <= 0:
        raise BadRequest("device_id: one device (a sealed envelope opens for one device "
                         "only)", code="invalid_field")


def _bytes(body: dict[str, Any], key: str) -> bytes:
    value = body.get(key)
    if not isinstance(value, bytes):
        raise BadRequest(f"{key}: expected bytes", code="malformed_command")
    return value
