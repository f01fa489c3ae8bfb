"""Routes: push subscriptions and the server's VAPID key (docs/notifications.md,
services/push/). A subscription belongs to the device whose token made it."""

from __future__ import annotations

from quart import request

from chatd.domain.models import Session
from chatd.errors import NotFound
from chatd.services.context import Services
from chatd.services.push.subscriptions import public_record
from chatd.web import models_notify as notify
from chatd.web.api import Api
from chatd.web.client_address import client_address
from chatd.web.render import NO_CONTENT, Reply


def register(api: Api, services: Services) -> None:
    push = services.push

    @api.route("GET", "/push/vapid",
               summary="The VAPID public key to subscribe with (a browser's "
                       "applicationServerKey)",
               description="Your home shard's key: it signs every push to you. Each shard "
                           "makes its own on first start and keeps it in its data "
                           "directory.",
               response=notify.VapidKey)
    async def vapid(session: Session) -> Reply:
        return notify.VapidKey(await push.vapid_key_for(session.user_id))

    @api.route("POST", "/push/subscriptions",
               summary="Subscribe this device to push notifications",
               description=(
                   "`{kind: \"webpush\", endpoint, keys: {p256dh, auth}}` (a browser's "
                   "PushSubscription) or `{kind: \"http\", url, pushkey, app_id}` (a "
                   "Sygnal-style gateway that relays to APNs or FCM). The URL must be https "
                   "and resolve only to public addresses (400 endpoint_refused), unless the "
                   "operator set push.allow_private_endpoints. Subscribing the same endpoint "
                   "again answers the same id. 400 invalid_push_key; 409 "
                   "too_many_subscriptions."),
               body=notify.PushSubscribe, status=201, response=notify.Subscribed,
               errors=(409, 429))
    async def subscribe(session: Session, body: notify.PushSubscribe) -> Reply:
        # A write on the home and a DNS resolution here: the messages bucket.
        services.ratelimits.take("messages", account=session.user_id,
                                 address=client_address(request, services.proxies))
        keys = body.keys
        sub_id = await push.client.subscribe(
            session.user_id, session.device_id, kind=body.kind, endpoint=body.endpoint,
            p256dh=keys.p256dh if keys else None, auth=keys.auth if keys else None,
            url=body.url, pushkey=body.pushkey, app_id=body.app_id)
        return notify.Subscribed(sub_id), 201

    @api.route("GET", "/push/subscriptions",
               summary="Your push subscriptions, on all your devices (without their keys)",
               response=notify.PushSubscriptions)
    async def list_subscriptions(session: Session) -> Reply:
        return notify.PushSubscriptions([
            _subscription(sub_id, record)
            for sub_id, record in await push.client.listing(session.user_id)])

    @api.route("DELETE", "/push/subscriptions/{subscription_id}",
               summary="Delete a push subscription (any of your devices')", status=204)
    async def unsubscribe(session: Session, subscription_id: int) -> Reply:
        if not await push.client.unsubscribe(session.user_id, subscription_id):
            raise NotFound(f"no push subscription {subscription_id}",
                           code="unknown_subscription")
        return NO_CONTENT


def _subscription(sub_id: int, record: dict[str, object]) -> notify.PushSubscription:
    public = public_record(dict(record))
    kind = str(public.get("kind", ""))
    target = public.get("endpoint") if kind == "webpush" else public.get("url")
    app_id = public.get("app_id")
    device_id = public.get("device_id")
    created_at = public.get("created_at")
    return notify.PushSubscription(
        sub_id, kind, device_id if isinstance(device_id, int) else 0,
        created_at if isinstance(created_at, int) else 0, str(target or ""),
        str(app_id) if app_id is not None else None)
