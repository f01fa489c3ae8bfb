"""Routes of the end-to-end relay (issue 14): /to_device, /certificate/*, /me/access_key,
/sealed/send. Each parses, then makes one service call (services/to_device.py,
services/sealed_sender.py)."""

from __future__ import annotations

import base64
import binascii

from quart import request

from chatd.domain.models import Session
from chatd.errors import Unauthorized
from chatd.services.context import Services
from chatd.web import models_relay as models
from chatd.web.api import Access, Api
from chatd.web.client_address import client_address
from chatd.web.render import NO_CONTENT, Reply

#: The header a sealed send carries the recipient's access key in (Signal's name).
ACCESS_KEY_HEADER = "Unidentified-Access-Key"


def register(api: Api, services: Services) -> None:
    @api.route("POST", "/to_device",
               summary="Queue to-device messages (end-to-end key exchange) for devices",
               description=(
                   "Each message waits on its target device's queue, on its user's home "
                   "shard, until that device acknowledges it (`to_device_ack` on /ws); "
                   "it arrives as a `to_device` frame. \"*\" targets every device of "
                   "the user. A retry with the same txn_id (per sending device) queues "
                   "nothing twice. Unknown users and devices are skipped. Rate limit "
                   "`to_device`: one per target device. 409 to_device_queue_full when a "
                   "target's queue is at its cap."),
               body=models.SendToDevice, response=models.ToDeviceQueued,
               errors=(409, 429, 503))
    async def send_to_device(session: Session, body: models.SendToDevice) -> Reply:
        queued = await services.to_device.send(
            session, body.txn_id, body.messages,
            address=client_address(request, services.proxies))
        return models.ToDeviceQueued(queued)

    @api.route("GET", "/certificate/sender",
               summary="A short-lived sender certificate for sealed sender, signed by the "
                       "server", response=models.SenderCertificate, errors=(409, 503))
    async def sender_certificate(session: Session) -> Reply:
        cert = await services.sealed.certificate(session)
        return models.SenderCertificate(
            cert["certificate"], cert["signature"], cert["key_id"], session.user_id,
            session.device_id, cert["identity_key"], cert["expires"])

    @api.route("GET", "/certificate/server_keys", access=Access.PUBLIC,
               summary="The server's certificate keys (one per shard), by key_id",
               response=models.ServerKeys)
    async def server_keys() -> Reply:
        keys, unreachable = await services.sealed.server_keys()
        return models.ServerKeys(keys, unreachable)

    @api.route("PUT", "/me/access_key",
               summary="Store your 16-byte unidentified access key (sealed sender)",
               body=models.AccessKey, status=204, errors=(503,))
    async def set_access_key(session: Session, body: models.AccessKey) -> Reply:
        await services.sealed.set_access_key(session, base64.b64decode(body.access_key))
        return NO_CONTENT

    @api.route("POST", "/sealed/send", access=Access.PUBLIC,
               summary="Deliver a sealed envelope to a device without naming the sender",
               description=(
                   "No bearer token: the recipient's access key in the "
                   f"`{ACCESS_KEY_HEADER}` header (base64). A wrong or missing key, and "
                   "an unknown user, all answer the same 401. The envelope is queued on "
                   "the device's to-device queue as type `sealed` with no sender. Rate "
                   "limit `sealed_send`, per client address."),
               body=models.SealedSend, status=204, errors=(401, 404, 409, 429, 503))
    async def sealed_send(body: models.SealedSend) -> Reply:
        address = client_address(request, services.proxies)
        raw_key = request.headers.get(ACCESS_KEY_HEADER, "")
        try:
            access_key = base64.b64decode(raw_key, validate=True)
        except (binascii.Error, ValueError):
            access_key = b""
        if not raw_key:
            # Still charged: probing without a key costs as much as with one.
            services.ratelimits.take("sealed_send", address=address)
            raise Unauthorized(f"send the recipient's access key in {ACCESS_KEY_HEADER}",
                               code="unauthorized")
        await services.sealed.send(body.user_id, body.device_id,
                                   base64.b64decode(body.envelope), access_key, address)
        return NO_CONTENT
