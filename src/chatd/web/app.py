"""The quart-trio application: routes, error rendering, request limits."""

from __future__ import annotations

import logging
import math
from typing import Any

import trio
from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    ASGISendEvent,
    HTTPScope,
    Scope,
)
from quart import request
from quart.typing import ResponseTypes
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from chatd.errors import ChatdError, RangeNotSatisfiable, RateLimited, Unauthorized
from chatd.services.context import Services
from chatd.web import (
    routes_accounts,
    routes_admin_users,
    routes_backup,
    routes_compact,
    routes_conversations,
    routes_email,
    routes_gdpr,
    routes_keys,
    routes_media,
    routes_messages,
    routes_moderation,
    routes_notify,
    routes_ops,
    routes_privacy,
    routes_push,
    routes_relay,
    routes_replication,
    routes_reports,
    routes_rich,
    webapp,
)
from chatd.web.api import Api, configured_limits
from chatd.web.streamed_body import ClientGone, StreamedBodies

log = logging.getLogger(__name__)

#: Seconds a route waits for its request body before answering 408 (quart's default,
#: stated here so it is one visible setting).
BODY_TIMEOUT = 60.0
#: Seconds a response that is ready before its request body has arrived (a 404, 405 or
#: 401 decided from the headers) waits for that body; see `DrainRequestBody`.
BODY_DRAIN_TIMEOUT = 2.0

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
}
#: Answers that must not wait for the body: it took too long already, or it is too large.
_NOT_DRAINED = frozenset({408, 413})


def error_response(status: int, code: str, message: str) -> tuple[dict[str, Any], int]:
    return {"error": {"code": code, "message": message}}, status


class _RequestBody:
    """How much of one request's body the app has been handed, and whether all of it."""

    __slots__ = ("_limit", "_received", "_waiter", "settled")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._received = 0
        self._waiter: trio.Event | None = None
        #: The body is in, the client is gone, or the body is past the limit (it will not
        #: be read, so there is nothing to wait for).
        self.settled = False

    def note(self, message: ASGIReceiveEvent) -> None:
        if message["type"] == "http.request":
            self._received += len(message.get("body", b""))
            if not message.get("more_body", False) or self._received > self._limit:
                self._settle()
        elif message["type"] == "http.disconnect":
            self._settle()

    async def wait(self) -> None:
        if not self.settled:
            if self._waiter is None:
                self._waiter = trio.Event()
            await self._waiter.wait()

    def _settle(self) -> None:
        self.settled = True
        if self._waiter is not None:
            self._waiter.set()


def _may_have_body(scope: HTTPScope) -> bool:
    if scope["http_version"] not in ("1.0", "1.1"):
        return True  # HTTP/2 says "no body" in framing, not in headers
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


class DrainRequestBody:
    """ASGI middleware: a response that is ready before its request body has arrived waits
    up to `BODY_DRAIN_TIMEOUT` for the rest of that body before it starts.

    Why: hypercorn reuses an HTTP/1.1 connection only once the request body has been read
    (h11 cannot parse the next request before it). A response that goes out first ends
    the connection instead, and a keep-alive client that already sent its next request
    on it lost that request. The app reads the body anyway (quart buffers it, up to
    `max_request_bytes`), so waiting for it costs no more than a route that uses it; a
    body that is late, too large or never comes gets its answer without waiting past the
    bound, with `Connection: close` (`web/hypercorn_adapter.py`)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self._app = app
        self._max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable,
                       send: ASGISendCallable) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        body = _RequestBody(self._max_bytes)

        async def receive_noting() -> ASGIReceiveEvent:
            message = await receive()
            body.note(message)
            return message

        async def send_after_body(message: ASGISendEvent) -> None:
            if (message["type"] == "http.response.start" and not body.settled
                    and message["status"] not in _NOT_DRAINED and _may_have_body(scope)):
                with trio.move_on_after(BODY_DRAIN_TIMEOUT):
                    await body.wait()
            await send(message)

        await self._app(scope, receive_noting, send_after_body)


def create_app(services: Services) -> QuartTrio:
    app = QuartTrio("chatd")
    app.config["MAX_CONTENT_LENGTH"] = services.config.server.max_request_bytes
    app.config["BODY_TIMEOUT"] = BODY_TIMEOUT
    # Uploads bypass quart's buffering (web/streamed_body.py); outside the drain, which
    # so never waits for a body nobody reads.
    app.asgi_app = StreamedBodies(  # type: ignore[method-assign]
        DrainRequestBody(app.asgi_app, services.config.server.max_request_bytes),
        routes_media.STREAMED_PATHS)
    # Keep JSON keys in the order the renderer builds them.
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.url_map.strict_slashes = False

    @app.errorhandler(ChatdError)
    async def chatd_error(error: ChatdError) -> ResponseTypes:
        response = await app.make_response((error.to_json(), error.status))
        if isinstance(error, Unauthorized):
            response.headers["WWW-Authenticate"] = 'Bearer realm="chatd"'
        if isinstance(error, RateLimited):
            # Rounded up: a client retrying after a rounded-down wait is refused again.
            response.headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
        if isinstance(error, RangeNotSatisfiable):
            response.headers["Content-Range"] = f"bytes */{error.size}"
        return response

    too_large = f"the request body is larger than {services.config.server.max_request_bytes} bytes"

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> ResponseTypes:
        status = error.code or 500
        code = _HTTP_CODES.get(status, "http_error")
        message = {
            404: "no such route; see /openapi.json for the API",
            405: "this route does not take that method",
            408: f"the request body did not arrive within {BODY_TIMEOUT:g} seconds",
            413: too_large,
        }.get(status, error.description or error.name)
        if status == 408:
            # A client's doing, so no traceback; one line, since many of them can be a
            # slow-body attack worth noticing.
            log.info("request body of %s %s did not arrive within %g s; answered 408",
                     request.method, request.path, BODY_TIMEOUT)
        response = await app.make_response(error_response(status, code, message))
        if status == 405 and error.get_response().headers.get("Allow"):
            response.headers["Allow"] = error.get_response().headers["Allow"]
        return response

    @app.errorhandler(ClientGone)
    async def client_gone(error: ClientGone) -> ResponseTypes:
        # Nobody is there to read it; the answer only ends the request.
        return await app.make_response(error_response(400, "client_gone", str(error)))

    @app.errorhandler(Exception)
    async def unexpected_error(error: Exception) -> ResponseTypes:
        log.error("unhandled error", exc_info=error)
        return await app.make_response(
            error_response(500, "internal", "an internal error occurred; it has been logged"))

    config = services.config
    api = Api(services.users, admin_token=config.server.admin_token,
              limits=configured_limits(config))
    routes_ops.register(api, services)
    routes_accounts.register(api, services)
    routes_conversations.register(api, services)
    routes_messages.register(api, services)
    routes_rich.register(api, services)
    routes_replication.register(api, services)
    routes_backup.register(api, services)
    routes_compact.register(api, services)
    routes_media.register(api, services)
    routes_privacy.register(api, services)
    routes_reports.register(api, services)
    routes_moderation.register(api, services)
    routes_gdpr.register(api, services)
    routes_admin_users.register(api, services)
    routes_email.register(api, services)
    routes_notify.register(api, services)
    routes_push.register(api, services)
    routes_keys.register(api, services)
    routes_relay.register(api, services)
    api.install(app)
    if config.web.enabled:
        webapp.register(app, webapp.StaticBundle.from_package())
    return app
