"""Wiring: build every service of one shard from its config and store, explicitly.

There are no module-level singletons; the server (and tests) hold one `Services` value
and pass what each part needs.
"""

from __future__ import annotations

from dataclasses import dataclass

from chatd.config import Config
from chatd.domain.ids import SnowflakeGenerator
from chatd.domain.ring import HashRing
from chatd.services.accounts import AccountService
from chatd.services.clock import Clock, SystemClock
from chatd.services.commands import Commands
from chatd.services.conversations import ConversationService
from chatd.services.live import Hub
from chatd.services.log import ConversationLog
from chatd.services.messaging import MessagingService
from chatd.services.owner import ConversationOwner
from chatd.services.passwords import PasswordHasher
from chatd.services.receipts import Receipts
from chatd.services.routing import Router
from chatd.storage import GroupCommitter, Store


@dataclass(frozen=True)
class Services:
    config: Config
    store: Store
    committer: GroupCommitter
    router: Router
    owner: ConversationOwner
    log: ConversationLog
    accounts: AccountService
    conversations: ConversationService
    messaging: MessagingService
    hub: Hub
    receipts: Receipts
    clock: Clock


def build_services(config: Config, store: Store, *, clock: Clock | None = None) -> Services:
    clock = clock or SystemClock()
    router = Router(HashRing(config.cluster.names, config.cluster.vnodes), config.cluster.shard)
    ids = SnowflakeGenerator(config.cluster.this_shard.number, clock.now_ms)
    log = ConversationLog(store)
    owner = ConversationOwner(store=store, log=log, router=router, ids=ids, clock=clock,
                              cache_size=config.storage.conversation_cache)
    hasher = PasswordHasher(opslimit=config.auth.argon2_opslimit,
                            memlimit_bytes=config.auth.argon2_memlimit_kib * 1024,
                            concurrency=config.auth.hash_concurrency)
    committer = GroupCommitter(store, max_batch=config.storage.max_batch)
    commands = Commands(committer)
    accounts = AccountService(store=store, commands=commands, router=router, ids=ids,
                              clock=clock, hasher=hasher, config=config.auth)
    committer.on_reload_needed(owner.forget_all)
    committer.on_reload_needed(accounts.forget_pending)
    conversations = ConversationService(owner=owner, commands=commands, accounts=accounts,
                                        ids=ids, clock=clock, limits=config.limits)
    hub = Hub(owner=owner, clock=clock)
    owner.on_message(hub.publish_message)
    accounts.on_profile_change(hub.publish_profile)
    accounts.on_device_revoked(hub.close_device)
    receipts = Receipts(hub=hub, owner=owner,
                        shares_read_receipts=accounts.shares_read_receipts)
    messaging = MessagingService(store=store, log=log, owner=owner, commands=commands, hub=hub,
                                 receipts=receipts,
                                 shares_read_receipts=accounts.shares_read_receipts,
                                 limits=config.limits)
    committer.ride_along(messaging.drain_hints_into)
    accounts.on_device_revoked(messaging.forget_device)
    return Services(config, store, committer, router, owner, log, accounts, conversations,
                    messaging, hub, receipts, clock)
