"""One shard as a Trio task tree: the group committer and hypercorn serving the app.

    serve()
    ├── committer.run          the only writer of RocksDB
    └── hypercorn.trio.serve   REST (+ WebSocket) through quart-trio

Shutdown order matters for durability: stop taking requests (hypercorn drains in-flight
ones up to graceful_timeout), then drain the committer so every command that was queued
lands or is refused, then close the store.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

import hypercorn.trio
import trio
from hypercorn.config import Config as HypercornConfig

from chatd.config import Config
from chatd.services.clock import Clock
from chatd.services.context import Services, build_services
from chatd.services.live import CLOSE_GOING_AWAY
from chatd.storage import Store
from chatd.web import hypercorn_guard
from chatd.web.app import create_app

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunningServer:
    """What `nursery.start(serve, ...)` hands back: where the shard listens, its parts."""

    url: str
    services: Services


def _hypercorn_config(config: Config) -> HypercornConfig:
    host, port = config.listen_address()
    hconfig = HypercornConfig()
    hconfig.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    hconfig.backlog = config.server.backlog
    hconfig.graceful_timeout = config.server.graceful_timeout
    # Read by hypercorn_guard from the TCP server's config: per server, no global.
    hconfig.chatd_send_timeout = config.server.send_timeout  # type: ignore[attr-defined]
    # No access log: request lines can carry tokens in query strings (WebSocket auth).
    hconfig.accesslog = None
    # Through our logging setup (a bare "-" would add a second stderr handler).
    hconfig.errorlog = logging.getLogger("hypercorn.error")
    hconfig.websocket_ping_interval = config.websocket.ping_interval
    # Frames above websocket.max_frame_bytes get an error frame from the app; hypercorn's
    # own limit (close 1009) only stops the absurd.
    hconfig.websocket_max_message_size = config.server.max_request_bytes
    return hconfig


async def _close_sockets_on(shutdown: trio.Event, services: Services) -> None:
    # Open WebSockets would hold hypercorn's shutdown for graceful_timeout and end with
    # 1006; closing them from the app with 1001 ends them at once and cleanly.
    await shutdown.wait()
    services.hub.close_all(CLOSE_GOING_AWAY, "server shutting down")


async def serve(config: Config, *, shutdown: trio.Event, clock: Clock | None = None,
                task_status: trio.TaskStatus[RunningServer] = trio.TASK_STATUS_IGNORED) -> None:
    """Run one shard until `shutdown` is set, then stop gracefully."""
    hypercorn_guard.install()
    store = Store.open(config.storage.data_dir, sync=config.storage.sync)
    try:
        services = build_services(config, store, clock=clock)
        app = create_app(services)
        async with trio.open_nursery() as nursery:
            await nursery.start(services.committer.run)
            async with trio.open_nursery() as web:
                web.start_soon(_close_sockets_on, shutdown, services)
                urls = await web.start(partial(hypercorn.trio.serve, app,
                                               _hypercorn_config(config),
                                               shutdown_trigger=shutdown.wait))
                url = urls[0]
                log.info("serving %s (shard %s, data %s)", url, config.cluster.shard,
                         config.storage.data_dir)
                task_status.started(RunningServer(url, services))
            services.committer.close()
        log.info("stopped cleanly")
    finally:
        store.close()
