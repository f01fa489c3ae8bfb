"""Operator routes for replication: where every range is, and the operator's failover."""

from __future__ import annotations

import json

from quart import Response

from chatd.errors import BadRequest
from chatd.services.context import Services
from chatd.web import models
from chatd.web.api import Access, Api, Media
from chatd.web.render import Reply

_OBJECT = Media("application/json", {"type": "object"})


def register(api: Api, services: Services) -> None:
    if not services.config.server.admin_token:
        return  # operator routes are off without an admin token
    coordinator = services.coordinator

    @api.route("GET", "/admin/ranges", summary="Every range's owner, replica and epoch, as "
               "this shard sees them, with its streams' state and lag", access=Access.ADMIN,
               response=_OBJECT)
    async def list_ranges() -> Reply:
        return _json(coordinator.status())

    @api.route("POST", "/admin/promote", summary="Make this shard the owner of a range whose "
               "owner is down (the operator's failover)", access=Access.ADMIN,
               body=models.Promote, response=_OBJECT, errors=(409,),
               description="Refused (409) while the range's owner still answers, when this "
                           "shard is not the range's replica, or when the range changed "
                           "meanwhile. With etcd the change is an etcd transaction.")
    async def promote_range(body: models.Promote) -> Reply:
        if body.range not in coordinator.placement.ring.shards:
            raise BadRequest(f"range: no shard {body.range!r} in this cluster",
                             code="invalid_field")
        state = await coordinator.promote(body.range)
        return _json({"promoted": state.to_wire()})


def _json(data: object) -> Response:
    return Response(json.dumps(data), content_type="application/json")

