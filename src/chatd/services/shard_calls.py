"""One implementation, two doors: a request to a shard, run here or over the mesh.

The GDPR and operator services (services/gdpr.py, services/account_admin.py) declare
their per-shard work as handlers of wire-form bodies (`requests`, method -> handler),
which peers reach through `PeerHandler`. `call` runs the same handler directly when the
shard is this one, so a one-shard server and a cluster take the same code path, and the
bodies are checked the same way.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from chatd.errors import BadRequest, ChatdError
from chatd.services.routing import PEER_FAILURES, Router, unreachable

Handler = Callable[[dict[str, Any]], Any]


async def call(router: Router, handlers: Mapping[str, Handler], shard: str, method: str,
               body: dict[str, Any], *, what: str = "home",
               timeout: float | None = None) -> Any:  # noqa: ASYNC109  # the request's deadline, sent to the peer
    """`handlers[method](body)` on `shard`: here, or as a mesh request (503
    `<what>_unreachable` when the peer does not answer)."""
    if router.is_local(shard):
        result = handlers[method](body)
        if inspect.isawaitable(result):
            result = await result
        return result
    peers = router.peers
    if peers is None or not peers.is_up(shard):
        raise unreachable(shard, what)
    try:
        return await peers.start_request(shard, method, body, timeout=timeout).wait()
    except ChatdError as exc:
        if exc.code in PEER_FAILURES:
            raise unreachable(shard, what) from None
        raise


def int_field(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest(f"{name}: expected an integer", code="malformed_command")
    return value
