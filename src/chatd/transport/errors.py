"""What a mesh request fails with, and a remote error rebuilt on this side.

A request fails with `PeerUnavailable` (503) when it cannot be answered: the peer is down,
its queue is full, or its link dropped with the request in flight; `PeerTimeout` (a
`PeerUnavailable`) when no answer came by the deadline. An error the peer's handler
raised comes back as the `ChatdError` of the same status, code and message.
"""

from __future__ import annotations

from chatd.errors import ChatdError, RateLimited, Unavailable
from chatd.protocol.mesh import ErrorInfo


class PeerUnavailable(Unavailable):
    """The peer shard cannot be asked now (down, overloaded, or its link dropped)."""

    code = "peer_unreachable"


class PeerTimeout(PeerUnavailable):
    """The peer shard did not answer before the request's deadline."""

    code = "peer_timeout"


class RemoteError(ChatdError):
    """A peer's error whose status no `ChatdError` class of ours has (so a newer peer's
    errors still reach the client with their status, code and message)."""

    def __init__(self, message: str, *, status: int, code: str) -> None:
        super().__init__(message, code=code)
        self.status = status  # type: ignore[misc]  # per-instance, as `code` is


def _error_classes() -> list[type[ChatdError]]:
    """Every ChatdError class, breadth first: the general ones before refinements."""
    found: list[type[ChatdError]] = []
    queue = [ChatdError]
    while queue:
        cls = queue.pop(0)
        found.append(cls)
        queue.extend(cls.__subclasses__())
    return found


def remote_error(info: ErrorInfo) -> ChatdError:
    """The error a peer answered with, as the `ChatdError` whose status (and, if one has
    it, code) matches; the code, message and a 429's retry_after are kept as they came."""
    if info.status == RateLimited.status and info.retry_after is not None:
        error: ChatdError = RateLimited(info.message, retry_after=info.retry_after)
        if info.code != error.code:
            error.code = info.code  # type: ignore[misc]
        return error
    by_status = [cls for cls in _error_classes()
                 if cls.status == info.status and cls not in (RemoteError, RateLimited)]
    exact = [cls for cls in by_status if cls.code == info.code]
    for cls in exact + by_status:
        try:
            return cls(info.message, code=info.code)
        except TypeError:  # a class whose constructor needs more than a message
            continue
    return RemoteError(info.message, status=info.status, code=info.code)
