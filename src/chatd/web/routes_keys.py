"""Routes: /keys/upload, /keys/query, /keys/claim (the end-to-end key directory).

Keys live on each user's home (services/key_directory.py); services/keys.py routes
each call there. docs/api.md "Keys" has the shapes and every error.
"""

from __future__ import annotations

from quart import request

from chatd.domain.e2e_keys import DeviceIdentity, Upload
from chatd.domain.models import Session
from chatd.services.context import Services
from chatd.web import models_keys as models
from chatd.web.api import Api
from chatd.web.client_address import client_address
from chatd.web.render import Reply


def register(api: Api, services: Services) -> None:
    keys = services.keys

    def address() -> str:
        return client_address(request, services.proxies)

    @api.route("POST", "/keys/upload", summary="Publish this device's end-to-end keys",
               description=(
                   "Identity keys are fixed for the device's life: others get 409 "
                   "identity_changed; keys another device on this home published get "
                   "409 identity_in_use. Every signature is the device's ed25519 signature "
                   "of the key's base64 text (400 bad_signature). A device holds at most "
                   "100 one-time keys (400 too_many_keys); a key id it holds with another "
                   "key is 409 key_id_reused. An optional `identity.sealed_key` {key, "
                   "signature} is the device's sealed-sender key, signed as a one-time "
                   "key; once published it is fixed (another: 409 sealed_key_changed). "
                   "The first upload of an identity moves the "
                   "user's device-list version (a `device_list` event to their contacts). Takes a "
                   "token of the `messages` rate limit."),
               body=models.KeysUpload, response=models.KeyCount, errors=(404, 409, 429))
    async def upload_keys(session: Session, body: models.KeysUpload) -> Reply:
        # Up to 101 signature checks on the home, and a first identity is told to every
        # contact: unlimited, a client could keep both busy. The `messages` bucket, as a
        # profile change takes it.
        services.ratelimits.take("messages", account=session.user_id, address=address())
        identity = body.identity
        sealed = identity.sealed_key
        count = await keys.upload(Upload(
            DeviceIdentity(session.user_id, session.device_id, identity.curve25519,
                           identity.ed25519, identity.signature, 0,
                           sealed.key if sealed else "", sealed.signature if sealed else ""),
            tuple(body.one_time_keys or ()),
            body.fallback_key[0] if body.fallback_key else None))
        return models.KeyCount(count)

    @api.route("POST", "/keys/query",
               summary="Users' devices' identity keys and device-list versions",
               body=models.KeysQuery, response=models.KeysQueryResult, errors=(404, 429))
    async def query_keys(session: Session, body: models.KeysQuery) -> Reply:
        with services.ratelimits.charging_unknown_users(account=session.user_id,
                                                        address=address()):
            rows = await keys.query(body.user_ids)
        return models.user_keys(rows)

    @api.route("POST", "/keys/claim",
               summary="Take one key per device: a one-time key, else the fallback key",
               description=(
                   "Each one-time key is handed out once (deleted in the claim's write). "
                   "Once a device's are gone its fallback key is given, with "
                   "`fallback: true`. Devices with no key to give are listed in "
                   "`missing`. Rate limited (`keys_claim`, one token per user claimed)."),
               body=models.KeysClaim, response=models.KeysClaimed, errors=(429,))
    async def claim_keys(session: Session, body: models.KeysClaim) -> Reply:
        claimed, missing = await keys.claim(
            session, [(item.user_id, item.device_id) for item in body.devices],
            address=address())
        return models.claimed(claimed, missing)
