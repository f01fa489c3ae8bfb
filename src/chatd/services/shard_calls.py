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

from chatd.services.routing import Router

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
    return await router.ask_peer(shard, method, body, what=what, timeout=timeout)
