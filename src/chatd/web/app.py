"""The quart-trio application: routes, error rendering, request limits."""

from __future__ import annotations

import logging
from typing import Any

from quart.typing import ResponseTypes
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from chatd.errors import ChatdError, RateLimited, Unauthorized
from chatd.services.context import Services
from chatd.web import routes_accounts, routes_conversations, routes_messages, routes_ops

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def error_response(status: int, code: str, message: str) -> tuple[dict[str, Any], int]:
    return {"error": {"code": code, "message": message}}, status


def create_app(services: Services) -> QuartTrio:
    app = QuartTrio("chatd")
    app.config["MAX_CONTENT_LENGTH"] = services.config.server.max_request_bytes
    # Keep JSON keys in the order the renderer builds them.
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.url_map.strict_slashes = False

    @app.errorhandler(ChatdError)
    async def chatd_error(error: ChatdError) -> ResponseTypes:
        response = await app.make_response((error.to_json(), error.status))
        if isinstance(error, Unauthorized):
            response.headers["WWW-Authenticate"] = 'Bearer realm="chatd"'
        if isinstance(error, RateLimited):
            response.headers["Retry-After"] = str(max(1, round(error.retry_after)))
        return response

    too_large = f"the request body is larger than {services.config.server.max_request_bytes} bytes"

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> ResponseTypes:
        status = error.code or 500
        code = _HTTP_CODES.get(status, "http_error")
        message = {
            404: "no such route; see /openapi.json for the API",
            405: "this route does not take that method",
            413: too_large,
        }.get(status, error.description or error.name)
        response = await app.make_response(error_response(status, code, message))
        if status == 405 and error.get_response().headers.get("Allow"):
            response.headers["Allow"] = error.get_response().headers["Allow"]
        return response

    @app.errorhandler(Exception)
    async def unexpected_error(error: Exception) -> ResponseTypes:
        log.error("unhandled error", exc_info=error)
        return await app.make_response(
            error_response(500, "internal", "an internal error occurred; it has been logged"))

    routes_ops.register(app, services)
    routes_accounts.register(app, services)
    routes_conversations.register(app, services)
    routes_messages.register(app, services)
    return app
