"""Configuration: defaults < TOML file < CHATD_* environment < command-line flags.

Every option lives in a frozen dataclass below, with its default; `conf/chatd.toml`
documents each one. An invalid value raises `ConfigError` whose message names the key,
so the CLI can print one line and exit 2.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from chatd.domain.ids import MAX_SHARD
from chatd.domain.ratelimit import Rate, parse_rate


class ConfigError(Exception):
    """An invalid setting; the message starts with the dotted key it concerns."""


@dataclass(frozen=True)
class ServerConfig:
    #: HOST:PORT for REST and WebSocket clients; port 0 picks a free port.
    listen: str = "127.0.0.1:8080"
    #: Seconds that in-flight requests get to finish on SIGINT/SIGTERM.
    graceful_timeout: float = 5.0
    #: Largest HTTP request body accepted, in bytes (message bodies have their own limit).
    max_request_bytes: int = 1_048_576
    #: Pending TCP connections the listener queues (hypercorn's default of 100 is too few).
    backlog: int = 2048
    #: Seconds one socket write may stall (a peer that reads nothing) before the
    #: connection is aborted; without it such a peer pins its task and blocks shutdown.
    send_timeout: float = 10.0
    #: Bearer token for operator routes such as /metrics; empty disables them.
    admin_token: str = field(default="", repr=False)
    #: PEM certificate chain and its private key: with both set, the listener speaks only
    #: TLS (HTTPS and WSS on the same port). SIGHUP rereads them. Empty: plain HTTP.
    certfile: str = ""
    keyfile: str = ""
    #: Addresses or CIDR blocks of reverse proxies in front of chatd. A client's address
    #: (for per-address rate limits) is the TCP peer's, unless the peer is one of these:
    #: then it is the right-most X-Forwarded-For entry that is not itself one of these.
    #: Empty: X-Forwarded-For is never believed.
    trusted_proxies: tuple[str, ...] = ()


@dataclass(frozen=True)
class StorageConfig:
    #: Directory of the RocksDB data; CHATD_DATA or --data override it.
    data_dir: str = "./var/chatd"
    #: fsync the write-ahead log before acknowledging a batch. Off risks the last
    #: acknowledged writes on power loss (not on a process crash).
    sync: bool = True
    #: Most commands one group-commit batch takes.
    max_batch: int = 1024
    #: Conversations whose state (head seq, members) an owner keeps in memory.
    conversation_cache: int = 100_000
    #: ... and the most memory they may take, in bytes (an estimate per conversation from
    #: its members, watermarks and recent senders): a few huge groups cannot fill memory
    #: while the count stays low.
    conversation_cache_bytes: int = 256 * 1024 * 1024
    #: Deleted bytes leave the disk: at most this often (seconds), when something was
    #: deleted or overwritten by a deletion, every memtable is flushed (so the write-ahead
    #: log that held them is dropped) and the changed key ranges are compacted
    #: (storage/purge.py, docs/privacy.md).
    purge_interval: float = 60.0


class Address(NamedTuple):
    """A parsed HOST:PORT (IPv6 hosts without their brackets)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ShardSpec:
    """One shard of the deployment, as every shard's config lists it ([[cluster.shards]])."""

    name: str
    #: 0..1023, unique per shard: part of every id the shard mints (domain/ids.py).
    number: int
    #: Where the shard's mesh listener is. None only for the embedded single shard, which
    #: has no mesh; a [[cluster.shards]] table must give one.
    mesh: Address | None = None


#: Shard names go into logs, ring signatures (comma-joined) and directory names.
_SHARD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SHARD_KEYS = ("name", "number", "mesh")
#: The shortest cluster secret accepted, in bytes: a guessable one authenticates nobody.
MIN_SECRET_BYTES = 16


@dataclass(frozen=True)
class ClusterConfig:
    """The shards of the deployment and how they reach each other (the mesh).

    Secrets are kept out of `repr` (and so out of logged configs and tracebacks), and no
    error message quotes them."""

    #: This process's shard name; must be one of `shards`. `--shard NAME` overrides it.
    shard: str = "local"
    #: Every shard of the deployment, this one included. The default is one shard with
    #: no mesh: a complete single-node server.
    shards: tuple[ShardSpec, ...] = (ShardSpec("local", 0),)
    #: The secret every shard proves at the mesh handshake (at least 16 bytes). Or
    #: `secret_file` (a file holding it), or CHATD_CLUSTER_SECRET. Needed with more than
    #: one shard unless the mesh uses mutual TLS.
    secret: str = field(default="", repr=False)
    secret_file: str = ""
    #: Points per shard on the consistent-hash ring.
    vnodes: int = 128
    #: Largest mesh frame accepted from a peer, in bytes.
    max_frame_bytes: int = 1_048_576
    #: Seconds a request to another shard may take before it fails (503).
    request_timeout: float = 2.0
    #: Seconds between PINGs on an idle mesh link; a peer silent for
    #: `missed_heartbeats` intervals is taken as down and redialled.
    heartbeat_interval: float = 0.5
    missed_heartbeats: int = 4
    #: Frames queued for one peer before sends to it are refused (bounded memory).
    queue_frames: int = 10_000
    #: Mutual TLS for mesh links: this shard's certificate chain and key, and the CA that
    #: signs every shard's certificate. All three or none.
    tls_certfile: str = ""
    tls_keyfile: str = ""
    tls_cafile: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.shards)

    @property
    def this_shard(self) -> ShardSpec:
        for spec in self.shards:
            if spec.name == self.shard:
                return spec
        raise ConfigError(f"cluster.shard: {self.shard!r} is not one of cluster.shards "
                          f"{list(self.names)}")

    @property
    def peers(self) -> tuple[ShardSpec, ...]:
        """Every shard but this one."""
        return tuple(spec for spec in self.shards if spec.name != self.shard)

    @property
    def is_clustered(self) -> bool:
        return len(self.shards) > 1

    @property
    def mesh_tls(self) -> bool:
        """Whether mesh links use mutual TLS (all three tls_* files set)."""
        return bool(self.tls_certfile and self.tls_keyfile and self.tls_cafile)

    def by_number(self, number: int) -> ShardSpec | None:
        """The shard with this number (the shard bits of an id), if any."""
        for spec in self.shards:
            if spec.number == number:
                return spec
        return None

    def secret_bytes(self) -> bytes:
        """The cluster secret: `secret`, else the contents of `secret_file` without a
        trailing newline (read on each call: call it once at startup), else b"" for none.
        CHATD_CLUSTER_SECRET arrives as `secret`."""
        if self.secret:
            return self.secret.encode()
        if not self.secret_file:
            return b""
        try:
            with open(self.secret_file, "rb") as file:
                data = file.read()
        except OSError as exc:
            raise ConfigError(f"cluster.secret_file: cannot read {self.secret_file}: "
                              f"{exc.strerror or exc}") from None
        # Editors and `echo` end a file with a newline that is not part of the secret.
        return data.rstrip(b"\r\n")


@dataclass(frozen=True)
class ReplicationConfig:
    """Each range's log shipped to a replica shard, and failover (docs/operations.md)."""

    #: Copies of every acknowledged record: 1 (off) or 2 (the owner and one replica).
    #: 0 picks: 2 with three or more shards, else 1.
    factor: int = 0
    #: Seconds without the owner's etcd lease before its replica takes the range over
    #: (the lease's TTL, so whole seconds, at least 2).
    failover_after: float = 5.0
    #: Whether replicas take over on their own; false leaves it to `chatd admin promote`.
    auto_failover: bool = True
    #: etcd endpoints (http:// or https://) holding who owns what. Empty: no etcd; the
    #: owner moves its own replica, and an owner's failover is `chatd admin promote`.
    etcd: tuple[str, ...] = ()
    #: Keys live under this prefix, so clusters can share an etcd.
    etcd_prefix: str = "/chatd"
    etcd_ca: str = ""
    etcd_cert: str = ""
    etcd_key: str = ""
    etcd_user: str = ""
    etcd_password: str = field(default="", repr=False)

    def effective_factor(self, shards: int) -> int:
        if shards < 2:
            return 1
        return self.factor or (2 if shards >= 3 else 1)


@dataclass(frozen=True)
class AuthConfig:
    #: Days a login token stays valid. Open sockets are closed (4001) when it expires;
    #: expired devices and tokens are deleted by a sweep every `prune_interval` seconds.
    token_ttl_days: float = 30.0
    prune_interval: float = 3600.0
    #: Devices (logins) one user may hold at once; past it, login answers 409.
    max_devices: int = 16
    min_password_length: int = 8
    #: argon2id cost. The defaults are libsodium's INTERACTIVE level (~80 ms, 64 MiB).
    #: Lower them only for tests and benchmarks.
    argon2_opslimit: int = 2
    argon2_memlimit_kib: int = 65_536
    #: Password hashes computed at once (each takes argon2_memlimit_kib of memory).
    hash_concurrency: int = 2


@dataclass(frozen=True)
class LimitsConfig:
    #: Largest message body, in bytes (after base64 decoding for binary content types).
    max_message_bytes: int = 65_536
    max_group_members: int = 1024
    #: Groups one user may be in, counted on each owner shard (a group counts on the
    #: shard that owns it): past it, creating or adding answers 409 too_many_groups.
    max_groups_per_user: int = 500
    history_page_default: int = 50
    history_page_max: int = 200
    #: Seconds after sending during which a sender may delete a message for everyone
    #: (group admins may at any time).
    delete_window_s: int = 172_800
    #: Seconds after sending during which a sender may edit a message (POST
    #: /messages/{conversation_id}/{seq}/edit).
    edit_window_s: int = 900
    #: Server-wide retention: messages older than this many days become tombstones
    #: (0: off, keep forever). Reads hide them at once; the sweeper writes the tombstones.
    retention_days: float = 0.0
    #: Seconds between passes of the sweeper (expired and retained messages, media
    #: references of deleted ones) on each conversation owner.
    sweep_interval: float = 5.0


@dataclass(frozen=True)
class WebSocketConfig:
    #: Close a connection that sent no frame for this many seconds (clients send `ping`).
    idle_timeout: float = 75.0
    #: Frames waiting for a socket before it counts as too slow and is closed (code 4008).
    max_queue: int = 1024
    #: Largest frame accepted from a client, in bytes; larger ones get an error frame.
    max_frame_bytes: int = 131_072
    #: Sends and reads from one connection waiting for durability at once; more wait
    #: their turn (the connection is not read meanwhile).
    max_inflight_sends: int = 256
    #: Live connections one user may hold at once (all devices); more are closed (4029).
    max_connections_per_user: int = 32


@dataclass(frozen=True)
class RateLimitsConfig:
    """Named token buckets (services/ratelimits.py; docs/privacy.md "Rate limits" gives
    the reasoning behind each default). Each rule is "AMOUNT/PERIOD burst AMOUNT": on
    average AMOUNT per PERIOD (s, m, h, d), and up to the burst at once (without one, a
    period's worth); byte buckets take KiB, MiB and GiB; "off" is no limit. A bucket has
    a rule per account and one per client address (server.trusted_proxies); a take must
    pass both. Budgets are per shard: a client spreading over n shards gets up to n
    times as much. A refusal is 429 with Retry-After, or a WebSocket `error` frame with
    `retry_after`."""

    #: Sends (REST and WebSocket), each message one.
    messages_per_account: str = "60/1s burst 120"
    messages_per_address: str = "600/1s burst 1200"
    #: ... and their body bytes.
    message_bytes_per_account: str = "1MiB/1s burst 8MiB"
    message_bytes_per_address: str = "8MiB/1s burst 64MiB"
    #: Direct conversations opened that did not exist before: the main spam signal.
    new_conversations_per_account: str = "200/1d burst 50"
    new_conversations_per_address: str = "2000/1d burst 500"
    #: Groups created.
    group_create_per_account: str = "100/1d burst 20"
    group_create_per_address: str = "1000/1d burst 200"
    #: Users put into groups (each one added, or named at creation, counts one).
    group_add_per_account: str = "1000/1h burst 500"
    group_add_per_address: str = "10000/1h burst 2000"
    #: Users looked up by handle (GET /users?handle=).
    handle_lookup_per_account: str = "100/15m"
    handle_lookup_per_address: str = "1000/15m"
    #: Bytes uploaded as media.
    media_bytes_per_account: str = "4GiB/1h burst 2GiB"
    media_bytes_per_address: str = "32GiB/1h burst 16GiB"
    #: One-time keys claimed, one per user whose keys are claimed (for the key routes).
    keys_claim_per_account: str = "1000/1h burst 500"
    keys_claim_per_address: str = "10000/1h burst 2000"
    #: To-device messages, one per target device (for the to-device route).
    to_device_per_account: str = "2000/1m burst 4000"
    to_device_per_address: str = "20000/1m burst 40000"
    #: Reports of users or messages (for the report routes).
    reports_per_account: str = "50/1d burst 10"
    reports_per_address: str = "500/1d burst 100"
    #: Login attempts, per account (the normalised handle, whether it exists or not)
    #: and per address: each costs a password hash.
    login_per_account: str = "20/1h burst 10"
    login_per_address: str = "60/1m burst 200"
    #: Registrations, per address (there is no account yet).
    register_per_address: str = "100/1h burst 200"
    #: Verification mails asked for (PATCH /me/notifications with an address): each is a
    #: mail to an address nobody has confirmed yet, so a low budget.
    email_verify_per_account: str = "10/1d burst 5"
    email_verify_per_address: str = "100/1d burst 50"
    #: The signed email links (/email/verify, /email/unsubscribe), per address: no login,
    #: each costs an HMAC and maybe a mesh request.
    email_links_per_address: str = "60/1m burst 120"
    #: Sealed-sender deliveries (POST /sealed/send), per address: the sender is not
    #: known, so the address is all there is to limit.
    sealed_send_per_address: str = "600/1m burst 1200"

    @classmethod
    def unlimited(cls) -> RateLimitsConfig:
        """Every bucket off: for benchmarks and tests that are not about limits."""
        return cls(**{item.name: "off" for item in dataclasses.fields(cls)})

    @classmethod
    def unlimited_env(cls) -> dict[str, str]:
        """The same as CHATD_RATELIMITS_* environment variables (for a server process)."""
        return {f"CHATD_RATELIMITS_{item.name.upper()}": "off"
                for item in dataclasses.fields(cls)}

    def rules(self) -> dict[str, tuple[Rate | None, Rate | None]]:
        """bucket -> (per account, per address), parsed; a side not configured is None."""
        found: dict[str, list[Rate | None]] = {}
        for item in dataclasses.fields(self):
            bucket, _, side = item.name.rpartition("_per_")
            sides = found.setdefault(bucket, [None, None])
            sides[0 if side == "account" else 1] = parse_rate(getattr(self, item.name))
        return {bucket: (sides[0], sides[1]) for bucket, sides in found.items()}


#: Settings that were replaced, with what replaced them (the message of their ConfigError).
_RETIRED = {
    "auth.attempts_burst": "ratelimits.login_per_address and ratelimits.register_per_address "
                           '(e.g. "30/1m burst 10"; conf/chatd.toml)',
    "auth.attempts_per_minute": "ratelimits.login_per_address and "
                                'ratelimits.register_per_address (e.g. "30/1m burst 10")',
}


@dataclass(frozen=True)
class MediaConfig:
    """Images, video and documents in chats (services/media.py, docs/architecture.md)."""

    #: Largest upload, in bytes; past it, 413 media_too_large.
    max_upload_bytes: int = 100 * 1024 * 1024
    #: Bytes of uploads one user may hold at once; past it, 507 quota_exceeded.
    quota_bytes: int = 10 * 1024 * 1024 * 1024
    #: Uploads one user may have in progress at once; more get 429. Staged bytes (on the
    #: data disk, before the quota is checked) are bounded by this x max_upload_bytes.
    max_concurrent_uploads: int = 4
    #: Seconds an upload no message references is kept before the GC deletes it.
    unreferenced_ttl: float = 24 * 3600.0
    #: Seconds between GC passes.
    gc_interval: float = 600.0
    #: Largest image (in pixels) thumbnails are made of: Pillow's decompression-bomb guard.
    max_image_pixels: int = 50_000_000
    #: Thumbnail format: "webp" or "jpeg".
    thumbnail_format: str = "webp"
    #: Longest lifetime of a signed link (POST /media/{id}/link), in seconds.
    max_link_ttl: float = 7 * 24 * 3600.0
    #: Where blobs live: "local" (files under storage.data_dir/media) or "s3".
    backend: str = "local"
    #: The S3-compatible backend (path-style URLs, SigV4): endpoint URL, bucket, region
    #: and credentials (or CHATD_MEDIA_S3_SECRET_KEY).
    s3_endpoint: str = ""
    s3_bucket: str = ""
    s3_region: str = "us-east-1"
    s3_access_key: str = ""
    s3_secret_key: str = field(default="", repr=False)
    #: Uploads above this many bytes go to S3 in parts (multipart upload).
    s3_multipart_threshold: int = 16 * 1024 * 1024
    #: How S3 downloads are served: "proxy" (through chatd, with Range) or "redirect"
    #: (302 to a presigned URL that expires after s3_presign_ttl seconds).
    s3_download: str = "proxy"
    s3_presign_ttl: float = 300.0


@dataclass(frozen=True)
class PrivacyConfig:
    """Message requests and contacts (docs/privacy.md)."""

    #: A direct chat opened by someone who is not yet a contact is a message request the
    #: recipient accepts or declines. False: every direct chat is accepted when opened (a
    #: team server where everyone may talk freely); blocks and settings still apply.
    message_requests: bool = True


@dataclass(frozen=True)
class AbuseConfig:
    """Reports, abuse detection and the content filter (docs/privacy.md, "Reports and
    abuse detection", states the scoring rule these constants enter)."""

    #: Accounts younger than this many days weigh their message requests more.
    young_account_days: float = 7.0
    #: Requests opened within this many hours count toward the score...
    request_window_hours: float = 24.0
    #: ... past the first `free_requests`, each scoring 1 point (x young_request_weight
    #: for a young account).
    free_requests: int = 10
    young_request_weight: int = 3
    #: Declines and blocks count once this many of the user's requests were answered;
    #: then a 100% decline-or-block rate scores `answer_points` (proportionally less).
    min_answered: int = 10
    answer_points: int = 60
    #: Points per distinct person whose report against the user is not dismissed.
    report_points: int = 15
    #: At this score an account shows in the admin queue (GET /admin/abuse) ...
    review_score: int = 25
    #: ... and at this one it is limited to replying in conversations it already has.
    limit_score: int = 50
    #: How a limited user may appeal; shown in the 403 account_limited message.
    appeal: str = "contact the operator of this server"
    #: Largest `evidence` a report may carry, in bytes of UTF-8 (413 past it).
    max_evidence_bytes: int = 65_536
    #: A content filter for text/* bodies: "package.module:Class", called with this
    #: section. Empty: UrlDomainBlocklist when blocked_domains lists any, else none.
    content_filter: str = ""
    #: Domains whose URLs (and subdomains') text messages may not carry.
    blocked_domains: tuple[str, ...] = ()


@dataclass(frozen=True)
class GdprConfig:
    """Exports and erasure of a user's data (services/gdpr.py, docs/privacy.md)."""

    #: Seconds a finished export is kept before it is deleted (it is personal data too).
    export_ttl: float = 24 * 3600.0
    #: The user's own messages an export holds at most (the newest are left out past it,
    #: and the export says so).
    export_max_messages: int = 100_000
    #: Bytes of uploaded files an export holds at most (the rest are listed, not copied).
    export_max_media_bytes: int = 1024 * 1024 * 1024
    #: Seconds between passes that delete expired exports and finish interrupted erasures.
    sweep_interval: float = 60.0


@dataclass(frozen=True)
class EmailConfig:
    """Email notifications over SMTP (services/email_notify.py, docs/notifications.md).
    Off while `host` is empty."""

    #: The SMTP server (a relay or the provider's submission host); empty: no email.
    host: str = ""
    port: int = 587
    #: "starttls" (upgrade on the submission port), "tls" (implicit TLS, port 465) or
    #: "none" (plain: only for a relay on loopback or a trusted LAN).
    security: str = "starttls"
    #: SMTP AUTH, when both are set. The password may come from CHATD_EMAIL_PASSWORD;
    #: it is never logged.
    user: str = ""
    password: str = field(default="", repr=False)
    #: The From of every mail, e.g. "chatd <notify@chat.example.org>" (`from` is a Python
    #: keyword, hence the name).
    from_address: str = ""
    #: The server's public base URL, e.g. "https://chat.example.org": the verification
    #: and unsubscribe links start with it.
    base_url: str = ""
    #: Seconds each SMTP read or write may take (connect, TLS, each command); a whole
    #: conversation is cut off at three times that.
    timeout: float = 20.0
    #: Seconds between looks at which digests are due.
    check_interval: float = 5.0
    #: SMTP conversations at once (each is a worker thread).
    max_connections: int = 2

    @property
    def enabled(self) -> bool:
        return bool(self.host)


@dataclass(frozen=True)
class PushConfig:
    """Push notifications (services/push/, docs/notifications.md)."""

    #: Off: no pushes are sent (subscriptions are still kept).
    enabled: bool = True
    #: Lifts the server-side request forgery guard: endpoints and gateway URLs may be
    #: http and resolve to loopback, private or link-local addresses (a LAN, a test).
    allow_private_endpoints: bool = False
    #: Seconds a device with a live socket has to acknowledge a message before it is
    #: pushed anyway (a device with no socket is pushed at once).
    grace_s: float = 5.0
    #: At most one push per conversation per device in this many seconds (the later
    #: messages are folded into the next push).
    coalesce_s: float = 3.0
    #: Seconds a push service keeps an undelivered push (Web Push TTL).
    ttl_s: int = 86_400
    #: Pushes waiting, in flight or retrying, at most; past it they are dropped (counted).
    queue_size: int = 10_000
    #: Requests in flight to one push service (origin) at most.
    per_origin_concurrency: int = 4
    #: Seconds one push request may take (connect, send, answer).
    timeout_s: float = 10.0
    #: Tries of one push (429, 5xx and network errors are retried).
    max_attempts: int = 5
    #: First retry after about this many seconds, doubling up to max_backoff_s.
    backoff_s: float = 1.0
    max_backoff_s: float = 300.0
    #: VAPID `sub` claim: a mailto: address or an https URL push services may contact.
    vapid_subject: str = "mailto:postmaster@chatd.invalid"
    #: Where the VAPID key is kept ("": <data dir>/push).
    vapid_dir: str = ""
    #: Push subscriptions one account may hold.
    max_subscriptions_per_user: int = 20
    #: Characters of message text a preview carries at most.
    preview_chars: int = 100


@dataclass(frozen=True)
class ToDeviceConfig:
    """Per-device queues of to-device messages on each user's home (services/to_device.py)."""

    #: Messages one device's queue holds at most; past it a send answers 409
    #: `to_device_queue_full` until the device acknowledges some.
    max_messages: int = 1000
    #: Bytes (of stored messages) one device's queue holds at most.
    max_bytes: int = 4 * 1024 * 1024
    #: Largest single to-device message (its `content`, stored), in bytes.
    max_message_bytes: int = 65_536
    #: One sender user's share of each target device's queue (sealed sends, sender
    #: unknown, share one): past it that sender gets 409 `to_device_sender_share_full`
    #: while others still get in, so a stranger cannot fill anyone's queue.
    max_messages_per_sender: int = 100
    max_bytes_per_sender: int = 256 * 1024
    #: Seconds a queued message waits at most; older ones are never delivered and are
    #: deleted by the next send to (or ack of) that queue.
    ttl: float = 7 * 24 * 3600.0


@dataclass(frozen=True)
class SealedSenderConfig:
    """Sealed sender (services/sealed_sender.py)."""

    #: Seconds a sender certificate is valid for (`expires` = issue time + this).
    certificate_ttl: float = 86_400.0


@dataclass(frozen=True)
class KeysConfig:
    """The end-to-end key directory (services/key_directory.py, docs/api.md "Keys")."""

    #: A claim that leaves a device fewer one-time keys than this tells the device
    #: (`keys_low`), as handing out its fallback key does.
    low_threshold: int = 10
    #: One-time keys of one device one claimer is handed per `claim_window` seconds;
    #: past it that claimer gets the fallback key (services/claim_shares.py).
    claims_per_claimer: int = 5
    claim_window: float = 3600.0


@dataclass(frozen=True)
class WebConfig:
    """The browser client served at `/` (web/webapp.py, docs/web.md)."""

    #: Serve the app's page and assets on the listener's port; false leaves only the API.
    enabled: bool = True


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    replication: ReplicationConfig = field(default_factory=ReplicationConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    websocket: WebSocketConfig = field(default_factory=WebSocketConfig)
    media: MediaConfig = field(default_factory=MediaConfig)
    ratelimits: RateLimitsConfig = field(default_factory=RateLimitsConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    abuse: AbuseConfig = field(default_factory=AbuseConfig)
    gdpr: GdprConfig = field(default_factory=GdprConfig)
    email: EmailConfig = field(default_factory=EmailConfig)
    push: PushConfig = field(default_factory=PushConfig)
    to_device: ToDeviceConfig = field(default_factory=ToDeviceConfig)
    sealed_sender: SealedSenderConfig = field(default_factory=SealedSenderConfig)
    keys: KeysConfig = field(default_factory=KeysConfig)
    web: WebConfig = field(default_factory=WebConfig)

    def listen_address(self) -> tuple[str, int]:
        return parse_listen(self.server.listen)


_SECTIONS = tuple(f.name for f in dataclasses.fields(Config))


def parse_listen(value: str) -> tuple[str, int]:
    return parse_address("server.listen", value)


def parse_address(key: str, value: str) -> Address:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{key}: expected HOST:PORT, got {value!r}")
    return Address(host.strip("[]"), int(port))


def _section_type(name: str) -> type[Any]:
    hints = typing.get_type_hints(Config)
    section: type[Any] = hints[name]
    return section


def _coerce(key: str, expected: Any, value: Any, *, from_text: bool,
            secret: bool = False) -> Any:
    """Check (and, for environment strings, convert) one value against its field type.
    A `secret` value is never quoted in the error."""
    origin = typing.get_origin(expected)
    shown = "a value that is not shown (a secret)" if secret else repr(value)
    if expected is bool:
        if from_text:
            lowered = str(value).lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {shown}")
    if expected is int:
        if from_text:
            try:
                return int(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a whole number, got {shown}") from None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected a whole number, got {shown}")
    if expected is float:
        if from_text:
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {shown}") from None
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {shown}")
    if expected is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {shown}")
    if origin is tuple and typing.get_args(expected)[0] is ShardSpec:
        if from_text:
            raise ConfigError(f"{key}: list the shards in the config file, as "
                              "[[cluster.shards]] tables (conf/cluster-3.toml); the "
                              "environment cannot set them")
        return _shard_specs(key, value)
    if origin is tuple:
        items = value.split(",") if from_text and isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f"{key}: expected a list of strings, got {shown}")
        return tuple(item.strip() for item in items)
    raise AssertionError(f"unsupported config type for {key}: {expected}")  # pragma: no cover


def _shard_specs(key: str, value: Any) -> tuple[ShardSpec, ...]:
    """[[cluster.shards]] tables (a list of dicts from TOML, or ShardSpecs from code)."""
    if not isinstance(value, list | tuple) or not value:
        raise ConfigError(f"{key}: expected one [[cluster.shards]] table per shard "
                          "(name, number, mesh), got " + repr(value))
    specs = []
    for index, table in enumerate(value):
        if isinstance(table, ShardSpec):
            specs.append(table)
            continue
        where = f"{key}[{index}]"
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where}: expected a table with name, number and mesh, "
                              f"got {table!r}")
        if isinstance(table.get("name"), str):
            where += f" ({table['name']!r})"
        for unknown in sorted(table.keys() - set(_SHARD_KEYS)):
            raise ConfigError(f"{where}: unknown setting {unknown!r} "
                              f"(a shard has {', '.join(_SHARD_KEYS)})")
        for missing in _SHARD_KEYS:
            if missing not in table:
                raise ConfigError(f"{where}: missing {missing!r} "
                                  f"(a shard has {', '.join(_SHARD_KEYS)})")
        name = _coerce(f"{where}.name", str, table["name"], from_text=False)
        number = _coerce(f"{where}.number", int, table["number"], from_text=False)
        mesh = _coerce(f"{where}.mesh", str, table["mesh"], from_text=False)
        specs.append(ShardSpec(name, number, parse_address(f"{where}.mesh", mesh)))
    return tuple(specs)


def _merge(base: Config, layer: Mapping[str, Mapping[str, Any]], *, from_text: bool) -> Config:
    sections: dict[str, Any] = {}
    for section_name, values in layer.items():
        if section_name not in _SECTIONS:
            raise ConfigError(f"{section_name}: unknown section (known: {', '.join(_SECTIONS)})")
        if not isinstance(values, Mapping):
            raise ConfigError(f"{section_name}: expected a table of settings")
        section_type = _section_type(section_name)
        hints = typing.get_type_hints(section_type)
        # A field kept out of repr holds a secret: no error may quote it either.
        secrets = {f.name for f in dataclasses.fields(section_type) if not f.repr}
        current = getattr(base, section_name)
        changes = {}
        for key, value in values.items():
            dotted = f"{section_name}.{key}"
            if dotted in _RETIRED:
                raise ConfigError(f"{dotted}: no longer a setting; replaced by "
                                  f"{_RETIRED[dotted]}")
            if key not in hints:
                raise ConfigError(f"{dotted}: unknown setting")
            changes[key] = _coerce(dotted, hints[key], value, from_text=from_text,
                                   secret=key in secrets)
        sections[section_name] = dataclasses.replace(current, **changes)
    return dataclasses.replace(base, **sections)


def _env_layer(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """CHATD_SECTION_KEY=value, e.g. CHATD_STORAGE_SYNC=false; CHATD_DATA is data_dir."""
    layer: dict[str, dict[str, str]] = {}
    for name, value in environ.items():
        if not name.startswith("CHATD_"):
            continue
        rest = name[len("CHATD_"):].lower()
        if rest == "data":
            layer.setdefault("storage", {})["data_dir"] = value
            continue
        if rest == "config":
            continue
        section, _, key = rest.partition("_")
        if section not in _SECTIONS or not key:
            raise ConfigError(f"{name}: not a chatd setting (expected CHATD_<SECTION>_<KEY>)")
        layer.setdefault(section, {})[key] = value
    return layer


def validate(config: Config) -> Config:
    parse_listen(config.server.listen)
    positive = {
        "server.max_request_bytes": config.server.max_request_bytes,
        "server.backlog": config.server.backlog,
        "storage.max_batch": config.storage.max_batch,
        "storage.conversation_cache": config.storage.conversation_cache,
        "storage.conversation_cache_bytes": config.storage.conversation_cache_bytes,
        "limits.max_groups_per_user": config.limits.max_groups_per_user,
        "cluster.vnodes": config.cluster.vnodes,
        "cluster.max_frame_bytes": config.cluster.max_frame_bytes,
        "cluster.missed_heartbeats": config.cluster.missed_heartbeats,
        "cluster.queue_frames": config.cluster.queue_frames,
        "auth.min_password_length": config.auth.min_password_length,
        "auth.argon2_opslimit": config.auth.argon2_opslimit,
        "auth.hash_concurrency": config.auth.hash_concurrency,
        "auth.max_devices": config.auth.max_devices,
        "limits.max_message_bytes": config.limits.max_message_bytes,
        "limits.max_group_members": config.limits.max_group_members,
        "limits.history_page_default": config.limits.history_page_default,
        "limits.history_page_max": config.limits.history_page_max,
        "websocket.max_queue": config.websocket.max_queue,
        "websocket.max_frame_bytes": config.websocket.max_frame_bytes,
        "websocket.max_inflight_sends": config.websocket.max_inflight_sends,
        "websocket.max_connections_per_user": config.websocket.max_connections_per_user,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key}: must be at least 1, got {value}")
    for key, number in (("auth.token_ttl_days", config.auth.token_ttl_days),
                        ("auth.prune_interval", config.auth.prune_interval),
                        ("server.graceful_timeout", config.server.graceful_timeout),
                        ("server.send_timeout", config.server.send_timeout),
                        ("websocket.idle_timeout", config.websocket.idle_timeout),
                        ("cluster.request_timeout", config.cluster.request_timeout),
                        ("cluster.heartbeat_interval", config.cluster.heartbeat_interval)):
        if number <= 0:
            raise ConfigError(f"{key}: must be greater than 0, got {number}")
    if config.auth.argon2_memlimit_kib < 8:
        raise ConfigError("auth.argon2_memlimit_kib: must be at least 8 (KiB)")
    if config.limits.history_page_default > config.limits.history_page_max:
        raise ConfigError("limits.history_page_default: must not exceed limits.history_page_max")
    _validate_cluster(config.cluster)
    _validate_replication(config.replication, len(config.cluster.shards))
    _validate_media(config.media)
    _validate_ratelimits(config.ratelimits)
    _validate_trusted_proxies(config.server.trusted_proxies)
    _validate_deletion(config)
    _validate_e2e_relay(config)
    _validate_abuse(config.abuse)
    _validate_gdpr(config.gdpr)
    _validate_email(config.email)
    _validate_push(config.push)
    if not 0 <= config.keys.low_threshold <= 100:
        raise ConfigError("keys.low_threshold: must be within 0..100 (a device holds at "
                          f"most 100 one-time keys), got {config.keys.low_threshold}")
    if config.keys.claims_per_claimer < 1:
        raise ConfigError("keys.claims_per_claimer: must be at least 1, got "
                          f"{config.keys.claims_per_claimer}")
    if config.keys.claim_window <= 0:
        raise ConfigError("keys.claim_window: must be greater than 0, got "
                          f"{config.keys.claim_window}")
    if config.server.max_request_bytes < config.limits.max_message_bytes:
        raise ConfigError("server.max_request_bytes: must be at least limits.max_message_bytes")
    return config


def _validate_push(push: PushConfig) -> None:
    for key, value in (("queue_size", push.queue_size),
                       ("per_origin_concurrency", push.per_origin_concurrency),
                       ("max_attempts", push.max_attempts), ("ttl_s", push.ttl_s),
                       ("max_subscriptions_per_user", push.max_subscriptions_per_user),
                       ("preview_chars", push.preview_chars)):
        if value < 1:
            raise ConfigError(f"push.{key}: must be at least 1, got {value}")
    for key, number in (("timeout_s", push.timeout_s), ("backoff_s", push.backoff_s),
                        ("max_backoff_s", push.max_backoff_s)):
        if number <= 0:
            raise ConfigError(f"push.{key}: must be greater than 0, got {number}")
    for key, number in (("grace_s", push.grace_s), ("coalesce_s", push.coalesce_s)):
        if number < 0:
            raise ConfigError(f"push.{key}: must not be negative, got {number}")
    subject = push.vapid_subject
    if not (subject.startswith("https://") or (
            subject.startswith("mailto:") and "@" in subject
            and "." in subject.rpartition("@")[2])):
        raise ConfigError("push.vapid_subject: expected mailto:someone@a.domain or an "
                          f"https:// URL, got {subject!r}")
def _validate_e2e_relay(config: Config) -> None:
    for key, value in (("to_device.max_messages", config.to_device.max_messages),
                       ("to_device.max_bytes", config.to_device.max_bytes),
                       ("to_device.max_message_bytes", config.to_device.max_message_bytes)):
        if value < 1:
            raise ConfigError(f"{key}: must be at least 1, got {value}")
    if config.to_device.max_message_bytes > config.to_device.max_bytes:
        raise ConfigError("to_device.max_message_bytes: must not exceed to_device.max_bytes")
    if config.sealed_sender.certificate_ttl <= 0:
        raise ConfigError("sealed_sender.certificate_ttl: must be greater than 0, got "
                          f"{config.sealed_sender.certificate_ttl}")
    for key, value in (("to_device.max_messages_per_sender",
                        config.to_device.max_messages_per_sender),
                       ("to_device.max_bytes_per_sender", config.to_device.max_bytes_per_sender)):
        if value < 1:
            raise ConfigError(f"{key}: must be at least 1, got {value}")
    if config.to_device.ttl <= 0:
        raise ConfigError(f"to_device.ttl: must be greater than 0, got {config.to_device.ttl}")


def _validate_ratelimits(ratelimits: RateLimitsConfig) -> None:
    for item in dataclasses.fields(ratelimits):
        try:
            parse_rate(getattr(ratelimits, item.name))
        except ValueError as exc:
            raise ConfigError(f"ratelimits.{item.name}: {exc}") from None


def _validate_trusted_proxies(proxies: tuple[str, ...]) -> None:
    for entry in proxies:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfigError(f"server.trusted_proxies: {entry!r} is not an IP address or a "
                              "CIDR block (e.g. \"10.0.0.1\", \"10.0.0.0/8\", \"::1\")") from None


def _validate_deletion(config: Config) -> None:
    for key, number in (("limits.sweep_interval", config.limits.sweep_interval),
                        ("storage.purge_interval", config.storage.purge_interval)):
        if number <= 0:
            raise ConfigError(f"{key}: must be greater than 0, got {number}")
    for key, number in (("limits.delete_window_s", config.limits.delete_window_s),
                        ("limits.edit_window_s", config.limits.edit_window_s),
                        ("limits.retention_days", config.limits.retention_days)):
        if number < 0:
            raise ConfigError(f"{key}: must not be negative, got {number}")


def _validate_gdpr(gdpr: GdprConfig) -> None:
    for key, number in (("gdpr.export_ttl", gdpr.export_ttl),
                        ("gdpr.export_max_messages", gdpr.export_max_messages),
                        ("gdpr.export_max_media_bytes", gdpr.export_max_media_bytes),
                        ("gdpr.sweep_interval", gdpr.sweep_interval)):
        if number <= 0:
            raise ConfigError(f"{key}: must be greater than 0, got {number}")


def _validate_email(email: EmailConfig) -> None:
    if email.security not in ("starttls", "tls", "none"):
        raise ConfigError(f"email.security: expected starttls, tls or none, got "
                          f"{email.security!r}")
    if not 1 <= email.port <= 65535:
        raise ConfigError(f"email.port: expected 1..65535, got {email.port}")
    for key, number in (("email.timeout", email.timeout),
                        ("email.check_interval", email.check_interval),
                        ("email.max_connections", email.max_connections)):
        if number <= 0:
            raise ConfigError(f"{key}: must be greater than 0, got {number}")
    if bool(email.user) != bool(email.password):
        raise ConfigError("email.user: set user and password together (or neither)")
    if not email.host:
        return
    if "@" not in email.from_address or any(c in email.from_address for c in "\r\n"):
        raise ConfigError("email.from_address: expected an address such as "
                          "\"chatd <notify@chat.example.org>\" when email.host is set")
    if not email.base_url.startswith(("https://", "http://")) \
            or any(c in email.base_url for c in " \r\n<>\"'"):
        raise ConfigError("email.base_url: expected the server's public URL, such as "
                          "\"https://chat.example.org\", when email.host is set")


def _validate_media(media: MediaConfig) -> None:
    for key, number in (("media.max_upload_bytes", media.max_upload_bytes),
                        ("media.max_concurrent_uploads", media.max_concurrent_uploads),
                        ("media.quota_bytes", media.quota_bytes),
                        ("media.unreferenced_ttl", media.unreferenced_ttl),
                        ("media.gc_interval", media.gc_interval),
                        ("media.max_image_pixels", media.max_image_pixels),
                        ("media.max_link_ttl", media.max_link_ttl),
                        ("media.s3_presign_ttl", media.s3_presign_ttl)):
        if number <= 0:
            raise ConfigError(f"{key}: must be greater than 0, got {number}")
    # S3 wants every part but the last to be at least 5 MiB.
    if media.s3_multipart_threshold < 5 * 1024 * 1024:
        raise ConfigError("media.s3_multipart_threshold: must be at least 5242880 (5 MiB, "
                          f"S3's smallest part), got {media.s3_multipart_threshold}")
    choices = (("media.thumbnail_format", media.thumbnail_format, ("webp", "jpeg")),
               ("media.backend", media.backend, ("local", "s3")),
               ("media.s3_download", media.s3_download, ("proxy", "redirect")))
    for key, value, allowed in choices:
        if value not in allowed:
            raise ConfigError(f"{key}: expected one of {', '.join(allowed)}, got {value!r}")
    if media.backend == "s3":
        for key, value in (("media.s3_endpoint", media.s3_endpoint),
                           ("media.s3_bucket", media.s3_bucket),
                           ("media.s3_access_key", media.s3_access_key),
                           ("media.s3_secret_key", media.s3_secret_key)):
            if not value:
                raise ConfigError(f"{key}: required with media.backend = \"s3\"")


def _validate_abuse(abuse: AbuseConfig) -> None:
    for key, number in (("abuse.young_account_days", abuse.young_account_days),
                        ("abuse.request_window_hours", abuse.request_window_hours),
                        ("abuse.young_request_weight", abuse.young_request_weight),
                        ("abuse.min_answered", abuse.min_answered),
                        ("abuse.limit_score", abuse.limit_score),
                        ("abuse.max_evidence_bytes", abuse.max_evidence_bytes)):
        if number <= 0:
            raise ConfigError(f"{key}: must be greater than 0, got {number}")
    for key, count in (("abuse.free_requests", abuse.free_requests),
                       ("abuse.answer_points", abuse.answer_points),
                       ("abuse.report_points", abuse.report_points),
                       ("abuse.review_score", abuse.review_score)):
        if count < 0:
            raise ConfigError(f"{key}: must not be negative, got {count}")
    if abuse.review_score > abuse.limit_score:
        raise ConfigError("abuse.review_score: must not exceed abuse.limit_score")
    if abuse.content_filter and not re.fullmatch(
            r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", abuse.content_filter):
        raise ConfigError(f"abuse.content_filter: expected \"package.module:Class\", got "
                          f"{abuse.content_filter!r}")


def _validate_cluster(cluster: ClusterConfig) -> None:
    if not cluster.shards:
        raise ConfigError("cluster.shards: list at least one shard")
    names: set[str] = set()
    numbers: dict[int, str] = {}
    meshes: dict[Address, str] = {}
    for spec in cluster.shards:
        if not _SHARD_NAME.fullmatch(spec.name):
            raise ConfigError(
                f"cluster.shards: shard name {spec.name!r} must be 1 to 64 characters of "
                "A-Z, a-z, 0-9, '_', '.' and '-', starting with a letter or digit")
        if spec.name in names:
            raise ConfigError(f"cluster.shards: shard name {spec.name!r} is listed twice")
        names.add(spec.name)
        if not 0 <= spec.number <= MAX_SHARD:
            raise ConfigError(f"cluster.shards ({spec.name!r}): number {spec.number} is "
                              f"outside 0..{MAX_SHARD}")
        if spec.number in numbers:
            raise ConfigError(f"cluster.shards ({spec.name!r}): number {spec.number} is "
                              f"already used by shard {numbers[spec.number]!r}; each shard "
                              "needs its own (it is part of every id the shard mints)")
        numbers[spec.number] = spec.name
        if spec.mesh is not None:
            if not spec.mesh.host or not 0 <= spec.mesh.port <= 65535:
                raise ConfigError(f"cluster.shards ({spec.name!r}): mesh: expected HOST:PORT, "
                                  f"got {str(spec.mesh)!r}")
            if spec.mesh in meshes:
                raise ConfigError(f"cluster.shards ({spec.name!r}): mesh {spec.mesh} is "
                                  f"already used by shard {meshes[spec.mesh]!r}")
            meshes[spec.mesh] = spec.name
        if cluster.is_clustered and (spec.mesh is None or spec.mesh.port == 0):
            raise ConfigError(f"cluster.shards ({spec.name!r}): mesh: every shard of a "
                              "cluster needs a HOST:PORT its peers can dial (not port 0)")
    if cluster.shard not in names:
        raise ConfigError(
            f"cluster.shard: {cluster.shard!r} is not one of cluster.shards "
            f"{sorted(names)}; set cluster.shard or pass --shard NAME")
    tls = {"cluster.tls_certfile": cluster.tls_certfile,
           "cluster.tls_keyfile": cluster.tls_keyfile, "cluster.tls_cafile": cluster.tls_cafile}
    if any(tls.values()) and not all(tls.values()):
        missing = ", ".join(key for key, value in tls.items() if not value)
        raise ConfigError(f"{missing}: mesh TLS needs tls_certfile, tls_keyfile and "
                          "tls_cafile together (each shard proves itself to the others)")
    if cluster.secret and cluster.secret_file:
        raise ConfigError("cluster.secret: set either secret (or CHATD_CLUSTER_SECRET) or "
                          "secret_file, not both")
    secret = cluster.secret_bytes()  # reads secret_file: an unreadable one stops startup
    if secret and len(secret) < MIN_SECRET_BYTES:
        source = "cluster.secret_file" if cluster.secret_file else "cluster.secret"
        raise ConfigError(f"{source}: the cluster secret must be at least "
                          f"{MIN_SECRET_BYTES} bytes, got {len(secret)}")
    if cluster.is_clustered and not secret:
        # Required with mesh TLS too: TLS encrypts the links, the secret is what every
        # handshake proves (docs/mesh.md).
        raise ConfigError(
            f"cluster.secret: {len(cluster.shards)} shards need a secret they share, which "
            "each proves to the others at the mesh handshake. Set cluster.secret (at least "
            f"{MIN_SECRET_BYTES} bytes; e.g. from `python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'`), cluster.secret_file = \"/path\", or the "
            "environment variable CHATD_CLUSTER_SECRET")


def _validate_replication(replication: ReplicationConfig, shards: int) -> None:
    if replication.factor not in (0, 1, 2):
        raise ConfigError(f"replication.factor: must be 1 (off) or 2, got {replication.factor}")
    if replication.factor == 2 and shards < 2:
        raise ConfigError("replication.factor: 2 needs at least two shards in cluster.shards")
    if replication.failover_after < 2 or replication.failover_after != int(
            replication.failover_after):
        raise ConfigError("replication.failover_after: must be whole seconds, at least 2 "
                          f"(it is the etcd lease's TTL), got {replication.failover_after}")
    for endpoint in replication.etcd:
        if not endpoint.startswith(("http://", "https://")):
            raise ConfigError(f"replication.etcd: {endpoint!r} must start with http:// or "
                              "https://")
    tls = (replication.etcd_cert, replication.etcd_key)
    if any(tls) and not all(tls):
        raise ConfigError("replication.etcd_cert: etcd client TLS needs etcd_cert and "
                          "etcd_key together")
    if bool(replication.etcd_user) != bool(replication.etcd_password):
        raise ConfigError("replication.etcd_user: set etcd_user and etcd_password together")


def load(path: str | None = None, *, environ: Mapping[str, str] | None = None,
         overrides: Mapping[str, Mapping[str, Any]] | None = None) -> Config:
    """Build the effective config. `path` may be None (no file); overrides come from flags."""
    config = Config()
    if path is not None:
        try:
            with open(path, "rb") as file:
                document = tomllib.load(file)
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: invalid TOML: {exc}") from None
        config = _merge(config, document, from_text=False)
    config = _merge(config, _env_layer(os.environ if environ is None else environ),
                    from_text=True)
    if overrides:
        config = _merge(config, overrides, from_text=False)
    return validate(config)


