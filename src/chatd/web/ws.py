"""GET /ws: the live stream.

Authentication comes from `?token=` (browsers cannot set headers on a WebSocket) or an
`Authorization: Bearer` header. A bad token gets the upgrade accepted and then closed with
code 4001 and the reason (browsers cannot read an HTTP rejection's status anyway). The
subprotocol picks the encoding:
`chatd.json` (default) or `chatd.msgpack`.

Each connection runs two tasks: the reader parses client frames and hands them to the
services, the writer drains the `LiveSession` into the socket, several frames to one
WebSocket message when they queue up. Bad frames get `error` frames; they never end the
connection or touch anyone else's.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from quart import websocket
from quart_trio import QuartTrio

from chatd.domain.models import SendResult, Session
from chatd.errors import ChatdError, Unauthorized
from chatd.protocol import frames
from chatd.protocol.frames import Codec, FrameError
from chatd.services.context import Services
from chatd.services.live import CLOSE_IDLE, CLOSE_UNAUTHORIZED, LiveSession, SessionClosed
from chatd.storage import Pending
from chatd.web.auth import bearer_token

log = logging.getLogger(__name__)


def register(app: QuartTrio, services: Services) -> None:
    accounts = services.accounts
    messaging = services.messaging
    hub = services.hub
    settings = services.config.websocket

    @app.websocket("/ws")
    async def ws() -> None:
        codec: Codec = "json"
        chosen = None
        for name in websocket.requested_subprotocols:
            if name in frames.SUBPROTOCOLS:
                codec, chosen = frames.SUBPROTOCOLS[name], name
                break
        token = websocket.args.get("token") or bearer_token(websocket.headers) or ""
        await websocket.accept(subprotocol=chosen)
        try:
            if not token:
                raise Unauthorized("send ?token=<token> or an Authorization header",
                                   code="missing_token")
            session = accounts.authenticate(token)
        except ChatdError as exc:
            await websocket.close(CLOSE_UNAUTHORIZED, f"{exc.code}: {exc.message}"[:120])
            return
        await _run_connection(session, codec)

    async def _run_connection(session: Session, codec: Codec) -> None:
        live = LiveSession(user_id=session.user_id, device_id=session.device_id,
                           store=services.store, owner=services.owner,
                           max_queue=settings.max_queue)
        first = hub.attach(live)
        try:
            live.start(messaging.conversations_of(session))
            if first:
                hub.announce_online(live, accounts.get_user(session.user_id))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_write, live, codec, nursery.cancel_scope)
                await _read(live, session, codec, nursery)
                nursery.cancel_scope.cancel()
        finally:
            if hub.detach(live):
                last_seen = services.clock.now_ms()
                accounts.record_last_seen(session.user_id, last_seen)
                hub.announce_offline(session.user_id, last_seen)

    async def _write(live: LiveSession, codec: Codec, scope: trio.CancelScope) -> None:
        try:
            while True:
                batch = await live.next_frames()
                await websocket.send(frames.encode_frames(batch, codec))
        except SessionClosed as closed:
            with trio.move_on_after(1):
                await websocket.close(closed.code, closed.reason)
            scope.cancel()

    async def _read(live: LiveSession, session: Session, codec: Codec,
                    nursery: trio.Nursery) -> None:
        inflight = trio.Semaphore(settings.max_inflight_sends)
        while True:
            with trio.move_on_after(settings.idle_timeout) as idle:
                data = await websocket.receive()
            if idle.cancelled_caught:
                live.close(CLOSE_IDLE, f"no frame for {settings.idle_timeout:.0f} s")
                await trio.sleep_forever()  # the writer closes the socket and ends us
            if len(data) > settings.max_frame_bytes:
                live.push(frames.error_frame(
                    "frame_too_large", f"frames are limited to {settings.max_frame_bytes} bytes"))
                continue
            try:
                frame = frames.decode_client_frame(data, codec)
            except FrameError as exc:
                live.push(frames.error_frame(exc.code, exc.message, exc.req))
                continue
            try:
                await _handle(frame, live, session, nursery, inflight)
            except ChatdError as exc:
                live.push(frames.error_from(exc, frame.req))

    async def _handle(frame: frames.ClientFrame, live: LiveSession, session: Session,
                      nursery: trio.Nursery, inflight: trio.Semaphore) -> None:
        if isinstance(frame, frames.SendFrame):
            await inflight.acquire()
            try:
                pending = messaging.start_send(
                    session, conversation_id=frame.conversation_id,
                    client_msg_id=frame.client_msg_id, content_type=frame.content_type,
                    body=frame.body)
            except BaseException:
                inflight.release()
                raise
            nursery.start_soon(_answer_send, live, frame.req, pending, inflight)
        elif isinstance(frame, frames.AckFrame):
            nursery.start_soon(_run_reported, live, frame.req, messaging.acknowledge,
                               session, frame.conversation_id, frame.seq, live.acked)
        elif isinstance(frame, frames.ReadFrame):
            nursery.start_soon(_run_reported, live, frame.req, messaging.mark_read,
                               session, frame.conversation_id, frame.seq)
        elif isinstance(frame, frames.TypingFrame):
            messaging.typing(session, frame.conversation_id)
            if frame.req is not None:
                live.push(frames.ok_frame(frame.req))
        elif isinstance(frame, frames.PingFrame):
            live.push(frames.pong_frame(frame.req))
        elif isinstance(frame, frames.SyncFrame):
            live.sync(frame.cursors)
            if frame.req is not None:
                live.push(frames.ok_frame(frame.req))

    async def _answer_send(live: LiveSession, req: str, pending: Pending[SendResult],
                           inflight: trio.Semaphore) -> None:
        try:
            result = await pending.wait()
        except ChatdError as exc:
            live.push(frames.error_from(exc, req))
        else:
            live.push(frames.sent_frame(req, result.message_id, result.conversation_id,
                                        result.seq, result.ts))
        finally:
            inflight.release()

    async def _run_reported(live: LiveSession, req: str | None,
                            operation: Callable[..., Awaitable[object]], *args: Any) -> None:
        try:
            await operation(*args)
        except ChatdError as exc:
            live.push(frames.error_from(exc, req))
        else:
            if req is not None:
                live.push(frames.ok_frame(req))
