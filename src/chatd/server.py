"""One shard as a Trio task tree: the group committer and the front listener.

    serve()
    ├── committer.run       the only writer of RocksDB
    ├── accounts.run_pruner deletes expired devices and tokens, hourly
    ├── gdpr.run            makes exports, deletes expired ones, finishes erasures
    ├── email.run           email digests and verification mails (when email.host is set)
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
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

import trio

from chatd.config import Config
from chatd.domain.ring import HashRing
from chatd.services.clock import Clock
from chatd.services.context import Services, build_services
from chatd.services.live import SessionEnd
from chatd.services.peering import PeerHandler
from chatd.storage import Store, claim_ring
from chatd.transport import Mesh, MeshOptions, PeerAddress
from chatd.transport.tls import mesh_tls_contexts
from chatd.web.app import create_app
from chatd.web.front import FrontServer
from chatd.web.hypercorn_adapter import HttpServer, require_supported_hypercorn
from chatd.web.media_downloads import MediaDownloads
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


def _mesh(config: Config, services: Services) -> Mesh | None:
    """The shard mesh, for a cluster (none for one shard): peers reach the services
    through `PeerHandler`, and the router reaches peers through the mesh."""
    cluster = config.cluster
    if not cluster.is_clustered:
        return None
    me = cluster.this_shard
    assert me.mesh is not None  # validate() insists on it in a cluster
    handler = PeerHandler(owner_api=services.owner_api, home_api=services.home_api,
                          delivery=services.delivery, coordinator=services.coordinator,
                          media=services.media,
                          extra_requests={**services.account_admin.requests,
                                          **services.gdpr.requests})
    server_ssl, client_ssl = (mesh_tls_contexts(cluster.tls_certfile, cluster.tls_keyfile,
                                                cluster.tls_cafile)
                              if cluster.mesh_tls else (None, None))
    mesh = Mesh(shard=me.name, listen=(me.mesh.host, me.mesh.port),
                peers=[PeerAddress(peer.name, peer.mesh.host, peer.mesh.port)
                       for peer in cluster.peers if peer.mesh is not None],
                secret=cluster.secret_bytes(), ring_signature=services.router.ring.signature(),
                boot_id=secrets.token_hex(8), handler=handler,
                options=MeshOptions(max_frame_bytes=cluster.max_frame_bytes,
                                    request_timeout=cluster.request_timeout,
                                    heartbeat_interval=cluster.heartbeat_interval,
                                    missed_heartbeats=cluster.missed_heartbeats,
                                    queue_frames=cluster.queue_frames),
                server_ssl=server_ssl, client_ssl=client_ssl)
    mesh.on_peer_up(handler.peer_up)
    mesh.on_peer_down(handler.peer_down)
    mesh.on_peer_up(services.push.devices.peer_up)
    mesh.on_peer_down(services.push.devices.peer_down)
    mesh.on_peer_up(services.to_device_feeds.peer_up)
    services.router.attach(services.owner_api.run, mesh)
    services.shipper.peers = mesh
    services.coordinator.peers = mesh
    return mesh


async def _run_in(scope: trio.CancelScope, run: Callable[[], Awaitable[None]]) -> None:
    with scope:
        await run()


async def _run_mesh(mesh: Mesh, scope: trio.CancelScope, address: tuple[str, int],
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    with scope:
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(mesh.run)
            except OSError as exc:
                # Name the mesh address: the operator would otherwise look at the client
                # port (`cannot serve on ...`, cli.py).
                raise OSError(exc.errno, exc.strerror, f"{address[0]}:{address[1]} "
                              "(cluster mesh)") from exc
            task_status.started()


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
    services: Services | None = None
    try:
        ring = HashRing(config.cluster.names, config.cluster.vnodes)
        claim_ring(store, ring.signature(), config.cluster.shard, shards=ring.shards)
        services = build_services(config, store, clock=clock)
        services.backups.remove_leftovers()
        host, port = config.listen_address()
        http = HttpServer(create_app(services), graceful_timeout=server.graceful_timeout,
                          send_timeout=server.send_timeout)
        front = FrontServer(http, LiveSockets(services), host=host, port=port,
                            backlog=server.backlog, graceful_timeout=server.graceful_timeout,
                            send_timeout=server.send_timeout, certificate=certificate,
                            media=MediaDownloads(services, send_timeout=server.send_timeout))
        # Everything built so far (the imported frameworks, the app) lives as long as the
        # process: keep it out of the cyclic collector's full passes, which otherwise
        # scan it again and again as messages allocate.
        gc.collect()
        gc.freeze()
        mesh = _mesh(config, services)
        async with trio.open_nursery() as nursery:
            await nursery.start(services.committer.run)
            await nursery.start(services.shipper.run)
            decider_scope = trio.CancelScope()
            decider_run = getattr(services.coordinator.decider, "run", None)
            if decider_run is not None:
                nursery.start_soon(_run_in, decider_scope, decider_run)
            mesh_scope = trio.CancelScope()
            if mesh is not None:
                me = config.cluster.this_shard.mesh
                assert me is not None
                await nursery.start(_run_mesh, mesh, mesh_scope, (me.host, me.port))
            async with trio.open_nursery() as web:
                web.start_soon(_close_sockets_on, shutdown, services)
                web.start_soon(_run_until, shutdown, services.accounts.run_pruner)
                web.start_soon(_run_until, shutdown, services.messaging.run_hint_writer)
                web.start_soon(_run_until, shutdown, partial(
                    services.coordinator.run, settle_after=2 * config.cluster.request_timeout))
                web.start_soon(_run_until, shutdown, services.media.run_collector)
                web.start_soon(_run_until, shutdown, services.sweeper.run)
                web.start_soon(_run_until, shutdown, services.purger.run)
                web.start_soon(_run_until, shutdown, services.gdpr.run)
                if services.email.enabled:
                    web.start_soon(_run_until, shutdown, services.email.run)
                web.start_soon(_run_until, shutdown, services.push.run)
                web.start_soon(_run_until, shutdown, services.to_device_feeds.run)
                web.start_soon(_run_until, shutdown, services.device_lists.run)
                url = await web.start(front.run, shutdown)
                log.info("serving %s (shard %s, data %s)", url, config.cluster.shard,
                         config.storage.data_dir)
                task_status.started(RunningServer(url, services, certificate))
            # Clients are gone; peers' requests stop now, and what they queued lands
            # with the committer's drain.
            mesh_scope.cancel()
            services.committer.close()
            services.shipper.close()
            decider_scope.cancel()
        log.info("stopped cleanly")
    finally:
        with trio.CancelScope(shield=True):
            if services is not None:
                await services.media.blobs.aclose()
        store.close()
