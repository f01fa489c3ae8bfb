"""Routes for operators and tooling: /healthz, /metrics, /openapi.json."""

from __future__ import annotations

import hmac

from quart import Response, request
from quart_trio import QuartTrio

from chatd import __version__
from chatd.errors import NotFound, Unauthorized
from chatd.services.context import Services
from chatd.web.auth import bearer_token
from chatd.web.openapi import openapi_spec
from chatd.web.routes_accounts import Reply


def register(app: QuartTrio, services: Services) -> None:
    spec = openapi_spec(__version__)
    admin_token = services.config.server.admin_token

    @app.get("/healthz")
    async def healthz() -> Reply:
        return {"status": "ok", "shard": services.router.shard, "version": __version__}

    @app.get("/openapi.json")
    async def openapi() -> Reply:
        return spec

    @app.get("/metrics")
    async def metrics() -> Response:
        if not admin_token:
            raise NotFound("metrics are off; set server.admin_token to turn them on")
        token = bearer_token(request.headers) or ""
        if not hmac.compare_digest(token.encode(), admin_token.encode()):
            raise Unauthorized("this route needs the admin token", code="invalid_token")
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
        return Response("\n".join(lines) + "\n", content_type="text/plain; version=0.0.4")
