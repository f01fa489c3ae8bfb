"""The client-facing error vocabulary.

Every error a client can see is a `ChatdError` subclass carrying an HTTP status and a
stable machine-readable `code`; the message says what was wrong and what to do. The web
layer turns these into `{"error": {"code", "message"}}` bodies (or WS `error` frames);
nothing below the web layer knows about HTTP beyond the status number.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ChatdError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code  # type: ignore[misc]  # per-instance refinement of the class code

    def to_json(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


class BadRequest(ChatdError):
    status = 400
    code = "bad_request"


class Unauthorized(ChatdError):
    status = 401
    code = "unauthorized"


class Forbidden(ChatdError):
    status = 403
    code = "forbidden"


class NotFound(ChatdError):
    status = 404
    code = "not_found"


class MethodNotAllowed(ChatdError):
    status = 405
    code = "method_not_allowed"


class Conflict(ChatdError):
    status = 409
    code = "conflict"


class PayloadTooLarge(ChatdError):
    status = 413
    code = "payload_too_large"


class UpgradeRequired(ChatdError):
    """A request to the WebSocket route that is not a (supported) WebSocket upgrade."""

    status = 426
    code = "upgrade_required"


class HeadersTooLarge(ChatdError):
    status = 431
    code = "request_too_large"


class HttpVersionNotSupported(ChatdError):
    status = 505
    code = "http_version"


class RateLimited(ChatdError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(ChatdError):
    """The request needs a part of the system that cannot answer now (e.g. an owner shard)."""

    status = 503
    code = "unavailable"


class StorageFailure(ChatdError):
    """A durable write failed: nothing in the failed batch was acknowledged."""

    status = 503
    code = "storage_failure"


class LengthRequired(ChatdError):
    status = 411
    code = "length_required"


class UnsupportedMediaType(ChatdError):
    """An upload whose declared type contradicts its content."""

    status = 415
    code = "unsupported_media_type"


class RangeNotSatisfiable(ChatdError):
    """416: carries the blob's size, for `Content-Range: bytes */N`."""

    status = 416
    code = "range_not_satisfiable"

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


class Quarantined(ChatdError):
    """Content an operator made unavailable (quarantined media)."""

    status = 451
    code = "quarantined"


class InsufficientStorage(ChatdError):
    """A user's media quota is used up."""

    status = 507
    code = "quota_exceeded"


class DeviceListStale(Conflict):
    """409: a send named device-list versions that are no longer current; the client
    queries the keys of `users` again (POST /keys/query) before it sends."""

    code = "device_list_stale"

    def __init__(self, users: list[int]) -> None:
        super().__init__(
            f"the device lists of {len(users)} user(s) changed since you read them: "
            "query their keys again (POST /keys/query), then resend")
        self.users = users

    def to_json(self) -> dict[str, Any]:
        body = super().to_json()
        body["error"]["users"] = [str(user) for user in self.users]
        return body
