"""Wiring: build every service of one shard from its config and store, explicitly.

There are no module-level singletons; the server (and tests) hold one `Services` value
and pass what each part needs.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatd import __version__
from chatd.config import Config
from chatd.domain.addresses import TrustedProxies
from chatd.domain.ids import SnowflakeGenerator
from chatd.domain.ring import HashRing
from chatd.replication.coordinator import Coordinator
from chatd.replication.placement import Placement, RangeState
from chatd.replication.range_records import RangeRecords
from chatd.replication.replica import Replica
from chatd.replication.shipper import Shipper
from chatd.services.abuse import AbuseHome
from chatd.services.abuse_signals import AbuseSignals
from chatd.services.account_admin import AccountAdmin
from chatd.services.accounts import AccountService
from chatd.services.blocks import BlockList
from chatd.services.clock import Clock, SystemClock
from chatd.services.commands import Commands
from chatd.services.content_filters import load_content_filter
from chatd.services.conversations import ConversationService
from chatd.services.deletion import Deletions
from chatd.services.delivery import Delivery
from chatd.services.direct_requests import DirectRequests
from chatd.services.edits import Edits
from chatd.services.email_notify import EmailNotifier
from chatd.services.exports import ExportStore
from chatd.services.forwarding import Forwarding
from chatd.services.gdpr import Gdpr
from chatd.services.invites import GroupInvites
from chatd.services.key_directory import KeyDirectory
from chatd.services.keys import DeviceListNotifier, Keys
from chatd.services.live import Hub
from chatd.services.log import ConversationLog
from chatd.services.media import MediaService
from chatd.services.mentions import MentionResolver
from chatd.services.messaging import MessagingService
from chatd.services.notify_prefs import NotifyPrefs, NotifySettings
from chatd.services.owner import ConversationOwner
from chatd.services.owner_api import OwnerApi
from chatd.services.passwords import PasswordHasher
from chatd.services.pins import Pins
from chatd.services.presence import Presence
from chatd.services.privacy import PrivacyService
from chatd.services.push import Push
from chatd.services.ratelimits import RateLimits
from chatd.services.reactions import Reactions
from chatd.services.receipts import Receipts
from chatd.services.reports import ReportService
from chatd.services.rich_messaging import RichMessaging
from chatd.services.routing import Router
from chatd.services.sealed_sender import IdentityKeyLookup, SealedSender
from chatd.services.smtp import SmtpSender
from chatd.services.sweeper import Sweeper
from chatd.services.to_device import KIND as TO_DEVICE_KIND
from chatd.services.to_device import Entry, ToDevice, ToDeviceFeeds, ToDeviceHome
from chatd.services.users import HomeApi, Users, token_prefix_for
from chatd.storage import GroupCommitter, Store, claim_secret
from chatd.storage.backup import Backups
from chatd.storage.blobs import BlobStore, LocalBlobStore, Staging
from chatd.storage.purge import Purger
from chatd.storage.snapshot import MediaFolder


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
    #: Placement of ranges and replication (chatd/replication).
    coordinator: Coordinator
    shipper: Shipper
    backups: Backups
    media: MediaService
    #: Privacy (docs/privacy.md): the client's side; the owner's side of requests and
    #: blocks of direct chats (its listeners are the abuse signals); block lists here.
    privacy: PrivacyService
    requests: DirectRequests
    blocks: BlockList
    #: Deletion, disappearing messages, erasure (services/deletion.py), the sweeper that
    #: expires and retires messages, and the purge of deleted bytes from the disk.
    deletions: Deletions
    sweeper: Sweeper
    purger: Purger
    #: Reports and abuse detection: the home's side, signals from anywhere, reports.
    abuse_home: AbuseHome
    abuse: AbuseSignals
    reports: ReportService
    #: The named rate-limit buckets ([ratelimits]); routes call `ratelimits.take(...)`.
    ratelimits: RateLimits
    #: server.trusted_proxies: whose X-Forwarded-For names the client (web/client_address.py).
    proxies: TrustedProxies
    #: The operator's side of accounts, on their home (services/account_admin.py).
    account_admin: AccountAdmin
    #: Exports and erasure of a user's data, across shards (services/gdpr.py).
    gdpr: Gdpr
    #: Reactions, edits and pins: the client's side (the owner's is in owner_api).
    rich: RichMessaging
    #: Forwarding messages between conversations (replies and mentions ride on sends).
    forwarding: Forwarding
    #: Notification preferences (mute, previews): the home's side, and everyone's.
    notify_prefs: NotifyPrefs
    notify_settings: NotifySettings
    #: Push notifications: subscriptions, the notifier (home), the sender (services/push/).
    push: Push
    #: To-device messages (issue 14): the queues of devices homed here, the client's
    #: side, and each live session's feed (services/to_device.py).
    to_device_home: ToDeviceHome
    to_device: ToDevice
    to_device_feeds: ToDeviceFeeds
    #: Sealed sender: certificates, access keys, sealed sends (services/sealed_sender.py).
    sealed: SealedSender
    #: End-to-end keys: the home's directory, the client's side (routed to homes), and
    #: the loop that tells contacts of device-list changes (services/keys.py).
    key_directory: KeyDirectory
    keys: Keys
    device_lists: DeviceListNotifier
    #: Email notifications of users homed here: settings, links, digests
    #: (services/email_notify.py); sends nothing while `email.host` is empty.
    email: EmailNotifier


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
    ring = HashRing(config.cluster.names, config.cluster.vnodes)
    placement = Placement(ring, config.replication.effective_factor(len(ring.shards)))
    router = Router(ring, config.cluster.shard, numbers, placement)
    ids = SnowflakeGenerator(shard_number, clock.now_ms)
    log = ConversationLog(store)
    owner = ConversationOwner(store=store, log=log, ids=ids, clock=clock,
                              cache_size=config.storage.conversation_cache,
                              cache_bytes=config.storage.conversation_cache_bytes)
    hasher = PasswordHasher(opslimit=config.auth.argon2_opslimit,
                            memlimit_bytes=config.auth.argon2_memlimit_kib * 1024,
                            concurrency=config.auth.hash_concurrency)
    committer = GroupCommitter(store, max_batch=config.storage.max_batch)
    commands = Commands(committer)
    ratelimits = RateLimits(config.ratelimits)
    accounts = AccountService(store=store, commands=commands,
                              token_prefix=token_prefix_for(shard_number), ids=ids,
                              clock=clock, hasher=hasher, config=config.auth,
                              ratelimits=ratelimits)
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
    requests = DirectRequests(store=store, owner=owner, commands=commands,
                              enabled=config.privacy.message_requests,
                              publish=delivery.publish_privacy)
    owner_api.requests = requests
    receipts.flows = requests.receipts_flow
    committer.on_reload_needed(requests.forget_all)
    invites = GroupInvites(store=store, owner=owner, commands=commands, limits=config.limits,
                           now_ms=clock.now_ms, add_member=owner_api.add_member,
                           publish=delivery.publish)
    owner_api.invites = invites
    committer.on_reload_needed(invites.forget_all)
    blocks = BlockList(store=store, commands=commands, clock=clock, accounts=accounts)
    committer.on_reload_needed(blocks.forget_pending)
    privacy = PrivacyService(router=router, users=users, blocks=blocks, owner_api=owner_api)
    abuse_home = AbuseHome(store=store, commands=commands, accounts=accounts, ids=ids,
                           clock=clock, config=config.abuse)
    committer.on_reload_needed(abuse_home.forget_pending)
    abuse = AbuseSignals(router=router, home=abuse_home, config=config.abuse)
    # Requests opened and how their recipients answered feed the sender's abuse score.
    requests.on_request_opened(abuse.request_opened)
    requests.on_request_answered(abuse.request_answered)
    reports = ReportService(router=router, home=abuse_home, config=config.abuse)
    reports.rate_limit = ratelimits.take
    conversations = ConversationService(router=router, accounts=users, ids=ids,
                                        limits=config.limits, abuse=abuse,
                                        privacy=privacy, ratelimits=ratelimits)
    messaging = MessagingService(store=store, router=router, owner=owner,
                                 owner_api=owner_api, commands=commands,
                                 read_receipt_settings=users.read_receipt_settings,
                                 limits=config.limits, ratelimits=ratelimits)
    messaging.content_filter = load_content_filter(config.abuse)
    messaging.mentions = MentionResolver(find_by_handle=users.find_by_handle)
    forwarding = Forwarding(router=router, messaging=messaging)
    owner.on_hint = messaging.wake_hint_writer
    committer.ride_along(messaging.drain_hints_into)
    accounts.on_device_revoked(messaging.forget_device)
    home_api = HomeApi(accounts=accounts, cursors_of=messaging.cursors_of,
                       hint_cursor=messaging.hint_cursor)
    home_api.requests.update(blocks.requests)
    home_api.requests.update(abuse_home.requests)
    home_api.posts.update(abuse_home.posts)
    presence = Presence(delivery=delivery, messaging=messaging, privacy=privacy)
    media = MediaService(store=store, commands=commands,
                         blobs=blobs or build_blob_store(config),
                         staging=Staging(Path(config.storage.data_dir) / "media" / "staging"),
                         config=config.media, clock=clock,
                         link_secret=media_link_secret(config, store), router=router,
                         shard_number=shard_number)
    committer.on_reload_needed(media.forget_pending)
    owner_api.media = media
    messaging.media = media
    # What else drops its state of a range this shard takes over or gives up.
    range_forgetters: list[Callable[[Callable[[int], bool]], None]] = []
    coordinator, shipper = _replication(config, store, placement, committer, commands, owner,
                                        requests, range_forgetters)
    owner_api.serves = coordinator.serves
    owner.groups.serves = coordinator.serves
    data_dir = Path(config.storage.data_dir)
    # The scratch space is inside the data directory, on its filesystem, so that the
    # checkpoint is hard links. The media seam: everything under <data>/media, until a
    # media store says which files it keeps (storage/snapshot.py, MediaSource).
    backups = Backups(store=store, workspace=data_dir / "backup-tmp",
                      media=MediaFolder(data_dir / "media"), chatd_version=__version__,
                      now_ms=clock.now_ms)
    deletions = Deletions(store=store, owner=owner, commands=commands, limits=config.limits,
                          clock=clock, publish=delivery.publish)
    deletions.media = media
    owner_api.deletions = deletions
    sweeper = Sweeper(store=store, deletions=deletions, commands=commands,
                      limits=config.limits, clock=clock)
    sweeper.serves = coordinator.serves
    sweeper.media = media
    purger = Purger(store, interval=config.storage.purge_interval)
    account_admin = AccountAdmin(store=store, commands=commands, accounts=accounts,
                                 clock=clock)
    exports = ExportStore(store=store, commands=commands, directory=data_dir / "exports",
                          clock=clock, shard_number=shard_number,
                          ttl_s=config.gdpr.export_ttl)
    gdpr = Gdpr(router=router, admin=account_admin, owner_api=owner_api, media=media,
                exports=exports, blocks=blocks, abuse=abuse_home,
                config=config.gdpr, limits=config.limits,
                now_ms=clock.now_ms)
    rich = _rich_messages(config, store, router, owner, owner_api, commands, committer,
                          clock, deletions, requests, range_forgetters, ratelimits)
    rich.content_filter = messaging.content_filter
    notify_prefs = NotifyPrefs(store=store, commands=commands, clock=clock)
    committer.on_reload_needed(notify_prefs.forget_pending)
    home_api.requests.update(notify_prefs.requests)
    account_admin.erase_hooks.append(notify_prefs.erase)
    notify_settings = NotifySettings(users=users, prefs=notify_prefs)
    push = Push(config=config.push, data_dir=data_dir, store=store, commands=commands,
                clock=clock, ids=ids, router=router, users=users, hub=hub, prefs=notify_prefs)
    committer.on_reload_needed(push.subscriptions.forget_pending)
    home_api.requests.update(push.subscriptions.requests)
    home_api.posts.update(push.devices.posts)
    hub.session_listeners.append(push.devices.session_changed)
    account_admin.erase_hooks.append(push.subscriptions.erase)
    accounts.on_device_revoked(push.subscriptions.device_revoked)
    accounts.on_device_revoked(push.notifier.forget_device)
    delivery.home_message_listeners.append(push.notifier.message_landed)
    messaging.ack_listeners.append(push.notifier.acked)

    def notifications_export(user_id: int) -> tuple[str, Any]:
        return "notifications.json", {
            **notify_prefs.export(user_id, clock.now_ms()),
            "push_subscriptions": push.subscriptions.export(user_id)}

    account_admin.export_parts.append(notifications_export)
    key_directory, keys, device_lists = _keys(config, store, commands, committer, clock,
                                              router, accounts, account_admin, home_api,
                                              delivery, messaging, ratelimits, privacy)
    to_device_home, to_device, to_device_feeds, sealed = _e2e_relay(
        config, store, router, commands, committer, accounts, delivery, hub, home_api,
        account_admin, ratelimits, clock, identity_key_lookup(keys))
    return Services(config, store, committer, router, owner, owner_api, log, accounts, users,
                    home_api, conversations, messaging, hub, delivery, presence, receipts,
                    clock, coordinator, shipper, backups, media, privacy, requests, blocks,
                    deletions, sweeper, purger, abuse_home, abuse, reports, ratelimits,
                    TrustedProxies(config.server.trusted_proxies), account_admin, gdpr,
                    rich, forwarding, notify_prefs, notify_settings, push,
                    to_device_home, to_device, to_device_feeds, sealed,
                    key_directory, keys, device_lists,
                    _email(config, store, commands, clock, router, users, messaging,
                           delivery, home_api, committer, account_admin, notify_prefs))


def _keys(config: Config, store: Store, commands: Commands, committer: GroupCommitter,
          clock: Clock, router: Router, accounts: AccountService, account_admin: AccountAdmin,
          home_api: HomeApi, delivery: Delivery, messaging: MessagingService,
          ratelimits: RateLimits, privacy: PrivacyService,
          ) -> tuple[KeyDirectory, Keys, DeviceListNotifier]:
    """The key directory on this home: its writes ride on device deletions and erasure,
    its mesh requests join the home's, its changes reach contacts and devices."""
    directory = KeyDirectory(store=store, commands=commands, accounts=accounts, clock=clock,
                             low_threshold=config.keys.low_threshold)
    committer.on_reload_needed(directory.forget_pending)
    accounts.device_deleters.append(directory.delete_device_keys)
    account_admin.erase_hooks.append(directory.erase)
    account_admin.device_export.append(directory.export_device)
    home_api.requests.update(directory.requests)
    notifier = DeviceListNotifier(delivery=delivery,
                                  conversations_of=messaging.conversations_of,
                                  blocked_by=privacy.blocked_list)
    directory.on_device_list_change(notifier.changed)
    directory.on_keys_low(notifier.keys_low)
    return directory, Keys(router=router, directory=directory, ratelimits=ratelimits), notifier


def identity_key_lookup(keys: Keys) -> IdentityKeyLookup:
    """A device's curve25519 identity key, for sender certificates: from the key
    directory on the user's home (services/keys.py); None if it published none."""
    async def curve25519_of(user_id: int, device_id: int) -> str | None:
        identity = await keys.identity_keys(user_id, device_id)
        return None if identity is None else identity.curve25519

    return curve25519_of


def _e2e_relay(config: Config, store: Store, router: Router, commands: Commands,
               committer: GroupCommitter, accounts: AccountService, delivery: Delivery,
               hub: Hub, home_api: HomeApi, account_admin: AccountAdmin,
               ratelimits: RateLimits, clock: Clock, identity_key: IdentityKeyLookup,
               ) -> tuple[ToDeviceHome, ToDevice, ToDeviceFeeds, SealedSender]:
    """To-device queues and sealed sender (issue 14)."""
    def publish(user_id: int, device_id: int, entries: list[Entry]) -> None:
        delivery.publish_kind(TO_DEVICE_KIND, [user_id], [device_id, entries],
                              lambda value: [value[0], [entry.to_wire() for entry in value[1]]])

    home = ToDeviceHome(store=store, commands=commands, accounts=accounts,
                        config=config.to_device, clock=clock, publish=publish)
    committer.on_reload_needed(home.forget_pending)
    accounts.device_deleters.append(home.delete_device)
    home_api.requests.update(home.requests)
    relay = ToDevice(router=router, home=home, ratelimits=ratelimits, config=config.to_device)
    feeds = ToDeviceFeeds(hub=hub, relay=relay, router=router,
                          max_queue=config.websocket.max_queue)
    delivery.kinds[TO_DEVICE_KIND] = feeds.deliver
    sealed = SealedSender(router=router, store=store, commands=commands, to_device=home,
                          ratelimits=ratelimits, config=config.sealed_sender, clock=clock,
                          identity_key=identity_key)
    home_api.requests.update(sealed.requests)
    account_admin.erase_hooks.append(home.erase_user)
    account_admin.erase_hooks.append(sealed.erase_user)
    return home, relay, feeds, sealed



def _email(config: Config, store: Store, commands: Commands, clock: Clock, router: Router,
           users: Users, messaging: MessagingService, delivery: Delivery,
           home_api: HomeApi, committer: GroupCommitter, account_admin: AccountAdmin,
           prefs: NotifyPrefs) -> EmailNotifier:
    """Email notifications on the home: its `home.email_*` requests, and (when an SMTP
    server is configured) the listener that schedules digests as messages arrive."""
    email = config.email
    notifier = EmailNotifier(
        config=email, store=store, commands=commands, clock=clock, router=router,
        users=users,
        secret=claim_secret(store, "email_link_secret"),
        conversations_of=messaging.conversations_of,
        sender=SmtpSender(email) if email.enabled else None)
    home_api.requests.update(notifier.requests)
    committer.on_reload_needed(notifier.forget_pending)
    account_admin.erase_hooks.append(notifier.erase)
    # Mute and previews are the user's notification preferences, shared with push.
    notifier.muted = lambda user_id, conversation_id: prefs.is_muted(
        user_id, conversation_id, clock.now_ms())
    notifier.previews = prefs.previews
    if notifier.enabled:
        delivery.home_message_listeners.append(notifier.message_arrived)
    return notifier


def _rich_messages(config: Config, store: Store, router: Router, owner: ConversationOwner,
                   owner_api: OwnerApi, commands: Commands, committer: GroupCommitter,
                   clock: Clock, deletions: Deletions, requests: DirectRequests,
                   range_forgetters: list[Callable[[Callable[[int], bool]], None]],
                   ratelimits: RateLimits) -> RichMessaging:
    """Reactions, edits and pins: the owner's side (commands, what history shows of
    them, what a deletion takes with them) and the client's."""
    reactions = Reactions(store=store, owner=owner, commands=commands, clock=clock,
                          deletions=deletions)
    edits = Edits(store=store, owner=owner, commands=commands, limits=config.limits,
                  clock=clock, deletions=deletions)
    pins = Pins(owner=owner, commands=commands, clock=clock, deletions=deletions)
    reactions.requests = edits.requests = requests
    for part in (reactions, edits, pins):
        deletions.on_tombstone.append(part.tombstoned)
    for pending in (reactions, edits):
        committer.on_reload_needed(pending.forget_all)
        range_forgetters.append(pending.forget_where)
    owner_api.reactions, owner_api.edits, owner_api.pins = reactions, edits, pins
    return RichMessaging(router=router, limits=config.limits, ratelimits=ratelimits)


def _replication(config: Config, store: Store, placement: Placement, committer: GroupCommitter,
                 commands: Commands, owner: ConversationOwner, requests: DirectRequests,
                 range_forgetters: list[Callable[[Callable[[int], bool]], None]],
                 ) -> tuple[Coordinator, Shipper]:
    shard = config.cluster.shard
    ranges = RangeRecords(store, placement.ring)
    coordinator: Coordinator | None = None

    def adopt(state: RangeState) -> None:
        assert coordinator is not None
        coordinator.adopt(state)

    def forget_range(range_: str) -> None:
        owner.forget_where(lambda conversation_id: ranges.range_of(conversation_id) == range_)
        requests.forget_where(lambda conversation_id: ranges.range_of(conversation_id) == range_)
        for forget in range_forgetters:
            forget(lambda conversation_id: ranges.range_of(conversation_id) == range_)

    def recover(_range: str) -> None:
        if coordinator is not None:
            coordinator.wake()

    shipper = Shipper(shard=shard, placement=placement, ranges=ranges,
                      request_timeout=config.cluster.request_timeout,
                      lease_held=lambda: coordinator is not None and coordinator.lease_held(),
                      on_refused=adopt, on_blocked=recover)
    replica = Replica(shard=shard, placement=placement, store=store, commands=commands,
                      ranges=ranges, adopt=adopt)
    coordinator = Coordinator(shard=shard, placement=placement, store=store, commands=commands,
                              shipper=shipper, replica=replica, forget_range=forget_range,
                              request_timeout=config.cluster.request_timeout,
                              replica_grace=config.replication.failover_after)
    coordinator.range_of = ranges.range_of
    replication = config.replication
    if placement.replicated:
        committer.set_gate(shipper)
        if replication.etcd:
            # Imported here: a shard without etcd never loads the client.
            from chatd.coordination.etcd import EtcdClient
            from chatd.replication.etcd_decider import EtcdDecider

            client = EtcdClient(
                list(replication.etcd), timeout=config.cluster.request_timeout,
                ca=replication.etcd_ca or None, cert=replication.etcd_cert or None,
                key=replication.etcd_key or None, user=replication.etcd_user or None,
                password=replication.etcd_password or None)
            coordinator.decider = EtcdDecider(
                coordinator, client, prefix=replication.etcd_prefix,
                ttl=int(replication.failover_after), auto_failover=replication.auto_failover)
    else:
        # Nothing to learn from peers: every range stays with its natural owner.
        coordinator.settled.set()
    return coordinator, shipper
