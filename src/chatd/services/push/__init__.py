"""Push notifications (docs/notifications.md): subscriptions per device on the user's
home, the notifier there, and the sender (Web Push with VAPID, Sygnal-style gateways).

- `vapid.py`: the server's VAPID key, made on first start, kept in the data directory;
- `addresses.py`: the server-side request forgery guard (subscribe and send time);
- `subscriptions.py`: the rows, the home's `home.push_*` requests, the client's side;
- `devices.py`: which devices have a live socket, told to their home;
- `notifier.py`: which device is pushed for which message, when, and what it says;
- `sender.py`: per-origin queues, encryption, retries, metrics.

`Push` holds them for one shard (services/context.py builds it; server.py runs it).
"""

from __future__ import annotations

from pathlib import Path

import trio

from chatd.config import PushConfig
from chatd.domain.ids import SnowflakeGenerator
from chatd.protocol import owner as ops
from chatd.services.clock import Clock
from chatd.services.commands import Commands
from chatd.services.live import Hub
from chatd.services.notify_prefs import NotifyPrefs
from chatd.services.push.addresses import Resolver
from chatd.services.push.devices import DeviceDirectory
from chatd.services.push.notifier import Notifier
from chatd.services.push.sender import PushSender
from chatd.services.push.subscriptions import PushClient, PushSubscriptions
from chatd.services.push.vapid import VapidKey
from chatd.services.routing import Router
from chatd.services.users import Users
from chatd.storage import Store

__all__ = ["Push"]


class Push:
    def __init__(self, *, config: PushConfig, data_dir: Path, store: Store,
                 commands: Commands, clock: Clock, ids: SnowflakeGenerator, router: Router,
                 users: Users, hub: Hub, prefs: NotifyPrefs) -> None:
        self.config = config
        self.vapid = VapidKey.load_or_create(
            Path(config.vapid_dir) if config.vapid_dir else data_dir / "push",
            config.vapid_subject)
        self.resolver = Resolver(allow_private=config.allow_private_endpoints)
        self.subscriptions = PushSubscriptions(
            store=store, commands=commands, clock=clock, ids=ids,
            max_per_user=config.max_subscriptions_per_user)
        self.client = PushClient(users=users, home=self.subscriptions, resolver=self.resolver)
        self._users = users
        # Each shard has its own key and pushes for the users homed on it: a browser must
        # subscribe with its user's home's key (`vapid_key_for`).
        self.subscriptions.requests["home.push_vapid"] = self._vapid_request
        self.sender = PushSender(config=config, resolver=self.resolver, vapid=self.vapid,
                                 drop_subscription=self.subscriptions.drop)

        async def facts(conversation_id: int, user_id: int) -> tuple[str, bool]:
            conv = await router.ask(ops.View(conversation_id, user_id))
            return str(conv.kind), bool(conv.encrypted)

        async def display_name(user_id: int) -> str:
            return (await users.get_user(user_id)).display_name

        self.devices = DeviceDirectory(router=router, hub=hub)
        self.notifier = Notifier(
            config=config, subscriptions=self.subscriptions, prefs=prefs, sender=self.sender,
            now_ms=clock.now_ms, devices_online=self.devices.online, facts=facts,
            display_name=display_name)

    async def vapid_key_for(self, user_id: int) -> str:
        """The VAPID public key pushes to this user are signed with: their home's."""
        key: str = await self._users.ask_home(user_id, "home.push_vapid", {},
                                              self._vapid_request)
        return key

    def _vapid_request(self, _body: dict[str, object]) -> str:
        return self.vapid.public_key

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.sender.run)
            await nursery.start(self.notifier.run)

    def prometheus(self) -> list[str]:
        lines = self.sender.prometheus()
        lines += ["# TYPE chatd_push_notifier_dropped_total counter",
                  f"chatd_push_notifier_dropped_total {self.notifier.dropped}"]
        return lines
