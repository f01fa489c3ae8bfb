"""Wiring: build every service of one shard from its config and store, explicitly.

There are no module-level singletons; the server (and tests) hold one `Services` value
and pass what each part needs.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

from chatd.config import Config
from chatd.domain.ids import SnowflakeGenerator
from chatd.domain.ring import HashRing
from chatd.services.accounts import AccountService
from chatd.services.clock import Clock, SystemClock
from chatd.services.commands import Commands
from chatd.services.conversations import ConversationService
from chatd.services.delivery import Delivery
from chatd.services.live import Hub
from chatd.services.log import ConversationLog
from chatd.services.media import MediaService
from chatd.services.messaging import MessagingService
from chatd.services.owner import ConversationOwner
from chatd.services.owner_api import OwnerApi
from chatd.services.passwords import PasswordHasher
from chatd.services.presence import Presence
from chatd.services.receipts import Receipts
from chatd.services.routing import Router
from chatd.services.users import HomeApi, Users, token_prefix_for
from chatd.storage import GroupCommitter, Store, claim_secret
from chatd.storage.blobs import BlobStore, LocalBlobStore, Staging


@dataclass(frozen=True)
class Services:
    config: Config
    store: Store
    committer: GroupCommitter
    router: Router
    owner: ConversationOwner
    owner_api: OwnerApi
    log: ConversationLog
    #: The home side of accounts (users homed here); everyone else calls `users`.
    accounts: AccountService
    users: Users
    home_api: HomeApi
    conversations: ConversationService
    messaging: MessagingService
    hub: Hub
    delivery: Delivery
    presence: Presence
    receipts: Receipts
    clock: Clock
    media: MediaService


def media_link_secret(config: Config, store: Store) -> bytes:
    """The key signed media links are made with. In a cluster every shard must verify
    the others' links, so it derives from the cluster secret; one shard keeps a random
    one in its database."""
    cluster_secret = config.cluster.secret_bytes()
    if cluster_secret:
        return hmac.new(cluster_secret, b"chatd media links", hashlib.sha256).digest()
    return claim_secret(store, "media_link_secret")


def build_blob_store(config: Config) -> BlobStore:
    media = config.media
    if media.backend == "s3":
        from chatd.storage.s3 import S3BlobStore, S3Settings

        # Keys carry the shard name: each shard counts references to its own blobs, so
        # two shards never delete each other's copy of the same bytes.
        return S3BlobStore(S3Settings(
            endpoint=media.s3_endpoint, bucket=media.s3_bucket, region=media.s3_region,
            access_key=media.s3_access_key, secret_key=media.s3_secret_key,
            multipart_threshold=media.s3_multipart_threshold,
            prefix=f"{config.cluster.shard}/"))
    return LocalBlobStore(Path(config.storage.data_dir) / "media")


def build_services(config: Config, store: Store, *, clock: Clock | None = None,
                   blobs: BlobStore | None = None) -> Services:
    clock = clock or SystemClock()
    numbers = {spec.name: spec.number for spec in config.cluster.shards}
    shard_number = config.cluster.this_shard.number
    router = Router(HashRing(config.cluster.names, config.cluster.vnodes), config.cluster.shard,
                    numbers)
    ids = SnowflakeGenerator(shard_number, clock.now_ms)
    log = ConversationLog(store)
    owner = ConversationOwner(store=store, log=log, ids=ids, clock=clock,
                              cache_size=config.storage.conversation_cache)
    hasher = PasswordHasher(opslimit=config.auth.argon2_opslimit,
                            memlimit_bytes=config.auth.argon2_memlimit_kib * 1024,
                            concurrency=config.auth.hash_concurrency)
    committer = GroupCommitter(store, max_batch=config.storage.max_batch)
    commands = Commands(committer)
    accounts = AccountService(store=store, commands=commands,
                              token_prefix=token_prefix_for(shard_number), ids=ids,
                              clock=clock, hasher=hasher, config=config.auth)
    users = Users(router=router, accounts=accounts, numbers=numbers)
    committer.on_reload_needed(owner.forget_all)
    committer.on_reload_needed(accounts.forget_pending)
    hub = Hub()
    delivery = Delivery(router=router, hub=hub)
    owner.on_message(delivery.publish_message)
    accounts.on_device_revoked(delivery.close_device)
    receipts = Receipts(delivery=delivery, owner=owner)
    owner_api = OwnerApi(owner=owner, log=log, commands=commands, receipts=receipts,
                         limits=config.limits, now_ms=clock.now_ms,
                         publish_ephemeral=delivery.publish_ephemeral)
    router.attach(owner_api.run, None)
    conversations = ConversationService(router=router, accounts=users, ids=ids,
                                        limits=config.limits)
    messaging = MessagingService(store=store, router=router, owner=owner,
                                 owner_api=owner_api, commands=commands,
                                 read_receipt_settings=users.read_receipt_settings,
                                 limits=config.limits)
    owner.on_hint = messaging.wake_hint_writer
    committer.ride_along(messaging.drain_hints_into)
    accounts.on_device_revoked(messaging.forget_device)
    home_api = HomeApi(accounts=accounts, cursors_of=messaging.cursors_of,
                       hint_cursor=messaging.hint_cursor)
    presence = Presence(delivery=delivery, messaging=messaging)
    media = MediaService(store=store, commands=commands,
                         blobs=blobs or build_blob_store(config),
                         staging=Staging(Path(config.storage.data_dir) / "media" / "staging"),
                         config=config.media, clock=clock,
                         link_secret=media_link_secret(config, store), router=router,
                         shard_number=shard_number)
    committer.on_reload_needed(media.forget_pending)
    owner_api.media = media
    messaging.media = media
    return Services(config, store, committer, router, owner, owner_api, log, accounts, users,
                    home_api, conversations, messaging, hub, delivery, presence, receipts,
                    clock, media)
