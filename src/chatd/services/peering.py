"""What this shard does for its peers: the mesh's requests and posts, by method.

    owner.*            an owner command or query (protocol/owner.py), run by OwnerApi
                       exactly as for a local client; answered once durable
    home.*             accounts, profiles and cursors of users homed here
                       (services/users.py HomeApi)
    deliver, deliver_here, directory.*
                       fan-out and the connection directory (services/delivery.py)
    replica.*, placement.*
                       replication: records shipped by owners, placement gossip
                       (chatd/replication/coordinator.py)
    media.*            media of this shard, and audiences of conversations it owns
                       (services/media.py)
    gdpr.*, home.admin_*, home.export_profile
                       exports, erasure and the operator's account actions
                       (services/gdpr.py, services/account_admin.py)

Requests are handled in the order they arrive on a link, synchronously up to the point
where a command is queued, so commands one peer forwards reach the committer in the
order it sent them (a client's pipelined sends keep their order across the mesh).
A body that does not fit its method is answered 400 and applied nowhere.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from chatd.errors import BadRequest, ChatdError, NotFound
from chatd.pending import Pending
from chatd.protocol import owner as ops
from chatd.replication.coordinator import Coordinator
from chatd.services import delivery as fanout
from chatd.services.delivery import Delivery
from chatd.services.media import MediaService
from chatd.services.owner_api import OwnerApi
from chatd.services.users import HomeApi

log = logging.getLogger(__name__)


class PeerHandler:
    def __init__(self, *, owner_api: OwnerApi, home_api: HomeApi, delivery: Delivery,
                 coordinator: Coordinator, media: MediaService | None = None,
                 extra_requests: Mapping[str, Callable[[dict[str, Any]], Any]] | None = None,
                 ) -> None:
        self._owner_api = owner_api
        self._home_api = home_api
        self._delivery = delivery
        self._coordinator = coordinator
        self._media_requests = media.requests if media is not None else {}
        #: Requests of services that declare their own (`gdpr.*`, `home.admin_*`:
        #: services/gdpr.py, services/account_admin.py).
        self._extra_requests = dict(extra_requests or {})

    def handle_request(self, peer: str, method: str, body: Any) -> Any:
        command_type = ops.COMMANDS.get(method)
        if command_type is not None:
            return self._run_owner_command(command_type, body)
        if method.startswith(("replica.", "placement.")):
            return self._coordinator.handle_request(peer, method, body)
        home = self._home_api.requests.get(method)
        if home is not None:
            return home(_map(body))
        media = self._media_requests.get(method)
        if media is not None:
            return media(_map(body))
        extra = self._extra_requests.get(method)
        if extra is not None:
            return extra(_map(body))
        if method == fanout.ONLINE:
            return self._delivery.online_from_peer(body)
        if method == fanout.ELSEWHERE:
            return self._delivery.elsewhere_from_peer(peer, body)
        raise NotFound(f"no mesh method {method!r}", code="unknown_method")

    def handle_post(self, peer: str, method: str, body: Any) -> None:
        try:
            if method == ops.Acknowledge.METHOD:
                self._run_owner_command(ops.Acknowledge, body)
            elif method == fanout.DELIVER:
                self._delivery.deliver_from_peer(body)
            elif method == fanout.DELIVER_HERE:
                self._delivery.deliver_here_from_peer(body)
            elif method == fanout.ATTACH:
                self._delivery.attach_from_peer(peer, body)
            elif method == fanout.DETACH:
                self._delivery.detach_from_peer(peer, body)
            elif method in self._home_api.posts:
                self._home_api.posts[method](_map(body))
            elif self._coordinator.handle_post(peer, method, body):
                pass
            else:
                log.warning("peer %s posted an unknown method %r; dropped", peer, method)
        except ChatdError:
            pass  # a hint or an event refused (e.g. an ack from a member who left)
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("peer %s posted a malformed %s: %s; dropped", peer, method, exc)

    def peer_up(self, peer: str, boot_id: str) -> None:
        self._delivery.peer_up(peer, boot_id)
        self._coordinator.peer_up(peer)

    def peer_down(self, peer: str) -> None:
        self._delivery.peer_down(peer)
        self._coordinator.peer_down(peer)

    def _run_owner_command(self, command_type: type[ops.OwnerCommand], body: Any) -> Any:
        try:
            command = command_type.from_wire(body)
        except ops.WireError as exc:
            raise BadRequest(str(exc), code="malformed_command") from None
        # (OwnerApi.run refuses a conversation this shard does not act for: the sender's
        # placement may be a step behind a failover.)
        result = self._owner_api.run(command)
        to_wire = ops.RESULTS[command.METHOD][0]
        if not isinstance(result, Pending):
            return to_wire(result)
        answer: Pending[Any] = Pending()

        def encode(done: Pending[Any]) -> None:
            if done.error is not None:
                answer.set_error(done.error)
            else:
                answer.set_result(to_wire(done.result))

        result.add_done_callback(encode)
        return answer


def _map(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("the body must be a map", code="malformed_command")
    return body
