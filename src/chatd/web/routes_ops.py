"""Routes for operators and tooling: /healthz, /metrics, /openapi.json."""

from __future__ import annotations

import json

from quart import Response

from chatd import __version__
from chatd.services.context import Services
from chatd.web import models
from chatd.web.api import Access, Api, Media
from chatd.web.openapi import openapi_document
from chatd.web.render import Reply

_PROMETHEUS = "text/plain; version=0.0.4"


def register(api: Api, services: Services) -> None:
    document: list[str] = []  # built on first use, once every route is declared

    @api.route("GET", "/healthz", summary="Liveness and readiness", access=Access.PUBLIC,
               response=models.Health)
    async def healthz() -> Reply:
        router = services.router
        peers = [models.PeerState(shard, router.peers is not None and router.peers.is_up(shard))
                 for shard in router.shards if shard != router.shard]
        return models.Health("ok", router.shard, __version__, peers)

    @api.route("GET", "/openapi.json", summary="This document", access=Access.PUBLIC,
               response=Media("application/json", {"type": "object"}))
    async def openapi() -> Reply:
        if not document:
            document.append(json.dumps(openapi_document(api, __version__)))
        return Response(document[0], content_type="application/json")

    if not services.config.server.admin_token:
        return  # metrics are off: the route is not served, nor described

    @api.route("GET", "/metrics", summary="Prometheus counters (needs server.admin_token)",
               access=Access.ADMIN, response=Media(_PROMETHEUS, {"type": "string"}))
    async def metrics() -> Reply:
        stats = services.committer.statistics()
        lines = [
            "# TYPE chatd_commit_batches_total counter",
            f"chatd_commit_batches_total {stats.batches_written}",
            "# TYPE chatd_commit_commands_total counter",
            f"chatd_commit_commands_total {stats.commands_committed}",
            "# TYPE chatd_commit_refused_total counter",
            f"chatd_commit_refused_total {stats.commands_refused}",
            "# TYPE chatd_commit_failed_writes_total counter",
            f"chatd_commit_failed_writes_total {stats.failed_writes}",
            "# TYPE chatd_commit_largest_batch gauge",
            f"chatd_commit_largest_batch {stats.largest_batch}",
            "# TYPE chatd_commit_pending gauge",
            f"chatd_commit_pending {stats.pending}",
        ]
        if services.router.peers is not None:
            lines += services.router.peers.prometheus()
            lines += services.coordinator.prometheus()
        lines += services.ratelimits.prometheus()
        lines += services.push.prometheus()
        lines += services.email.prometheus()
        return Response("\n".join(lines) + "\n", content_type=_PROMETHEUS)
