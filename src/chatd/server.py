"""One shard as a Trio task tree: the group committer and the front listener.

    serve()
    ├── committer.run       the only writer of RocksDB
    ├── accounts.run_pruner deletes expired devices and tokens, hourly
    └── FrontServer.run     one port: REST through hypercorn + quart-trio, /ws served
                            directly (web/front.py, web/sockets.py); TLS when
                            server.certfile is set (web/tls.py)

Shutdown order matters for durability: stop taking requests (in-flight ones get up to
graceful_timeout; WebSockets are closed with 1001), then drain the committer so every
command that was queued lands or is refused, then close the store.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from chatd.config import Config
from chatd.domain.ring import HashRing
from chatd.services.clock import Clock
from chatd.services.context import Services, build_services
from chatd.services.live import SessionEnd
from chatd.storage import Store, claim_ring
from chatd.web.app import create_app
from chatd.web.front import FrontServer
from chatd.web.hypercorn_adapter import HttpServer, require_supported_hypercorn
from chatd.web.sockets import LiveSockets
from chatd.web.tls import ServerCertificate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunningServer:
    """What `nursery.start(serve, ...)` hands back: where the shard listens, its parts."""

    url: str
    services: Services
    #: The TLS certificate being served, when server.certfile is set.
    certificate: ServerCertificate | None = None

    def reload_certificate(self) -> bool:
        """Reread server.certfile and server.keyfile for new connections (SIGHUP);
        whether a certificate was reloaded."""
        if self.certificate is None:
            log.info("no TLS certificate configured (server.certfile): nothing to reload")
            return False
        return self.certificate.reload()


async def _close_sockets_on(shutdown: trio.Event, services: Services) -> None:
    # Close every WebSocket with 1001 at once, so the shutdown waits for none of them.
    await shutdown.wait()
    services.hub.close_all(SessionEnd.SHUTTING_DOWN, "server shutting down")


async def _run_until(shutdown: trio.Event,
                     background: Callable[[], Awaitable[None]]) -> None:
    """Run a background service loop until shutdown begins."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(background)
        await shutdown.wait()
        nursery.cancel_scope.cancel()


async def serve(config: Config, *, shutdown: trio.Event, clock: Clock | None = None,
                task_status: trio.TaskStatus[RunningServer] = trio.TASK_STATUS_IGNORED) -> None:
    """Run one shard until `shutdown` is set, then stop gracefully.

    Raises UnsupportedHypercorn for a hypercorn it cannot drive, and ConfigError for a
    TLS certificate that cannot be loaded, before anything is opened; RingMismatch (a
    ConfigError) for a data directory made under another ring or for another shard."""
    require_supported_hypercorn()
    server = config.server
    certificate = (ServerCertificate(server.certfile, server.keyfile)
                   if server.certfile or server.keyfile else None)
    store = Store.open(config.storage.data_dir, sync=config.storage.sync)
    try:
        ring = HashRing(config.cluster.names, config.cluster.vnodes)
        claim_ring(store, ring.signature(), config.cluster.shard, shards=ring.shards)
        services = build_services(config, store, clock=clock)
        host, port = config.listen_address()
        http = HttpServer(create_app(services), graceful_timeout=server.graceful_timeout,
                          send_timeout=server.send_timeout)
        front = FrontServer(http, LiveSockets(services), host=host, port=port,
                            backlog=server.backlog, graceful_timeout=server.graceful_timeout,
                            send_timeout=server.send_timeout, certificate=certificate)
        # Everything built so far (the imported frameworks, the app) lives as long as the
        # process: keep it out of the cyclic collector's full passes, which otherwise
        # scan it again and again as messages allocate.
        gc.collect()
        gc.freeze()
        async with trio.open_nursery() as nursery:
            await nursery.start(services.committer.run)
            async with trio.open_nursery() as web:
                web.start_soon(_close_sockets_on, shutdown, services)
                web.start_soon(_run_until, shutdown, services.accounts.run_pruner)
                web.start_soon(_run_until, shutdown, services.messaging.run_hint_writer)
                url = await web.start(front.run, shutdown)
                log.info("serving %s (shard %s, data %s)", url, config.cluster.shard,
                         config.storage.data_dir)
                task_status.started(RunningServer(url, services, certificate))
            services.committer.close()
        log.info("stopped cleanly")
    finally:
        store.close()
