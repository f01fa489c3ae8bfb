"""Sending pushes: Web Push (RFC 8030, payloads encrypted per RFC 8291 with `http_ece`,
VAPID per RFC 8292) and Sygnal-style gateways, over httpx on Trio.

Containment: each destination origin (scheme://host:port) has its own queue and at most
`push.per_origin_concurrency` requests in flight, every request its deadline
(`push.timeout_s`), so a push service that hangs or crawls delays only the pushes
bound for it. The whole is bounded by `push.queue_size` jobs (queued, in flight or
waiting to retry): past it a push is dropped and counted (chatd_push_dropped_total).
A 429 (after its Retry-After, capped) and a 5xx or a network error are retried with
exponential backoff and jitter, up to `push.max_attempts`; a 404 or 410, or a gateway
naming the pushkey `rejected`, deletes the subscription; any other answer fails the
push (counted), and the subscription stays.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import http_ece
import httpx
import trio
from cryptography.hazmat.primitives.asymmetric import ec

from chatd.config import PushConfig
from chatd.domain.push import Target, topic
from chatd.services.push.addresses import AddressRefused, ResolveFailed, Resolver
from chatd.services.push.vapid import VapidKey

log = logging.getLogger(__name__)

#: Seconds a Retry-After is honoured at most (a longer one is a failure, retried no more).
MAX_RETRY_AFTER = 600.0
#: Web Push's limit on an encrypted payload is 4096 bytes; the JSON must fit with
#: aes128gcm's header (86 bytes), a padding byte and the 16-byte tag.
MAX_PAYLOAD = 3_900
#: Destination hosts whose connection pools are kept at most (idle ones are closed past it).
_MAX_CLIENTS = 512


@dataclass
class PushJob:
    """One push to one subscription."""

    user_id: int
    subscription_id: int
    record: dict[str, Any]
    data: dict[str, Any]
    urgency: str
    conversation_id: int
    attempt: int = 0


@dataclass
class _Origin:
    jobs: deque[PushJob] = field(default_factory=deque)
    active: int = 0


@dataclass
class PushStatistics:
    sent: dict[str, int] = field(default_factory=lambda: {"webpush": 0, "http": 0})
    failed: dict[str, int] = field(default_factory=lambda: {"webpush": 0, "http": 0})
    retried: int = 0
    dropped: int = 0
    gone: int = 0


class _Retry(Exception):
    def __init__(self, why: str, after: float | None = None) -> None:
        super().__init__(why)
        self.after = after


class PushSender:
    def __init__(self, *, config: PushConfig, resolver: Resolver, vapid: VapidKey,
                 drop_subscription: Callable[[int, int], None],
                 verify: ssl.SSLContext | bool = True) -> None:
        self._config = config
        self._resolver = resolver
        self._vapid = vapid
        self._drop = drop_subscription
        #: TLS verification of push services (True: the system's CAs, through certifi).
        self._verify = verify
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._origins: dict[str, _Origin] = {}
        self._nursery: trio.Nursery | None = None
        #: Jobs queued, in flight or waiting to retry.
        self.queued = 0
        self.stats = PushStatistics()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True):
                for client in self._clients.values():
                    await client.aclose()
                self._clients.clear()

    def _client_for(self, target: Target) -> httpx.AsyncClient:
        """One HTTP client (connection pool) per destination host. Requests go to the
        checked IP address, so a shared pool would key connections by address and could
        send one host's request down a connection made (and verified) for another."""
        client = self._clients.get(target.origin)
        if client is None:
            if len(self._clients) >= _MAX_CLIENTS:
                self._retire_idle_clients()
            client = httpx.AsyncClient(
                timeout=httpx.Timeout(self._config.timeout_s),
                limits=httpx.Limits(max_connections=self._config.per_origin_concurrency,
                                    max_keepalive_connections=self._config.per_origin_concurrency),
                follow_redirects=False, trust_env=False, verify=self._verify)
            self._clients[target.origin] = client
        return client

    def _retire_idle_clients(self) -> None:
        busy = {_origin_key(_target_of(job.record)) for origin in self._origins.values()
                for job in origin.jobs}
        assert self._nursery is not None
        for origin in list(self._clients)[:_MAX_CLIENTS // 2]:
            if _origin_key(origin) not in busy and _origin_key(origin) not in self._origins:
                self._nursery.start_soon(self._clients.pop(origin).aclose)

    def submit(self, job: PushJob) -> bool:
        """Queue a push (never blocks): False when it was dropped (the queue is full, or
        the sender is not running)."""
        if self._nursery is None or self.queued >= self._config.queue_size:
            self.stats.dropped += 1
            return False
        self.queued += 1
        self._enqueue(job)
        return True

    def _enqueue(self, job: PushJob) -> None:
        assert self._nursery is not None
        key = _target_of(job.record)
        origin = self._origins.setdefault(_origin_key(key), _Origin())
        origin.jobs.append(job)
        if origin.active < self._config.per_origin_concurrency:
            origin.active += 1
            self._nursery.start_soon(self._work, _origin_key(key), origin)

    async def _work(self, key: str, origin: _Origin) -> None:
        try:
            while origin.jobs:
                job = origin.jobs.popleft()
                await self._attempt(job)
        finally:
            origin.active -= 1
            if not origin.active and not origin.jobs:
                self._origins.pop(key, None)

    async def _attempt(self, job: PushJob) -> None:
        kind = str(job.record.get("kind"))
        try:
            with trio.fail_after(self._config.timeout_s):
                if kind == "webpush":
                    await self._web_push(job)
                else:
                    await self._gateway(job)
        except _Retry as retry:
            self._retry_or_fail(job, kind, str(retry), retry.after)
            return
        except AddressRefused as refused:
            # The name resolved to a public address at subscribe time and does not now:
            # the guard holds at send time too (logged without the URL: it is the user's).
            log.warning("push to subscription %d refused: %s", job.subscription_id,
                        type(refused).__name__)
            self.stats.failed[kind] = self.stats.failed.get(kind, 0) + 1
        except (trio.TooSlowError, httpx.HTTPError, ResolveFailed, OSError) as exc:
            self._retry_or_fail(job, kind, type(exc).__name__, None)
            return
        except _Failed as failed:
            log.info("push to subscription %d failed: %s", job.subscription_id, failed)
            self.stats.failed[kind] = self.stats.failed.get(kind, 0) + 1
        except _Gone as gone:
            log.info("push subscription %d removed: %s", job.subscription_id, gone)
            self.stats.gone += 1
            self.stats.failed[kind] = self.stats.failed.get(kind, 0) + 1
            self._drop(job.user_id, job.subscription_id)
        else:
            self.stats.sent[kind] = self.stats.sent.get(kind, 0) + 1
        self.queued -= 1

    def _retry_or_fail(self, job: PushJob, kind: str, why: str, after: float | None) -> None:
        job.attempt += 1
        if job.attempt >= self._config.max_attempts or self._nursery is None \
                or (after is not None and after > MAX_RETRY_AFTER):
            log.info("push to subscription %d failed after %d attempts: %s",
                     job.subscription_id, job.attempt, why)
            self.stats.failed[kind] = self.stats.failed.get(kind, 0) + 1
            self.queued -= 1
            return
        self.stats.retried += 1
        if after is None:
            base = self._config.backoff_s * 2 ** (job.attempt - 1)
            after = min(base, self._config.max_backoff_s) * random.uniform(0.5, 1.0)
        self._nursery.start_soon(self._later, job, after)

    async def _later(self, job: PushJob, delay: float) -> None:
        await trio.sleep(delay)
        self._enqueue(job)

    # -- the two kinds -------------------------------------------------------------------------

    async def _web_push(self, job: PushJob) -> None:
        record = job.record
        target = self._resolver.parse(record["endpoint"])
        plaintext = json.dumps(job.data, separators=(",", ":")).encode()
        if len(plaintext) > MAX_PAYLOAD:  # not with today's limits: a guard for later ones
            plaintext = json.dumps({key: value for key, value in job.data.items()
                                    if key not in ("preview", "sender_name")}).encode()
        body = encrypt(plaintext, record["p256dh"], record["auth"])
        headers = {"TTL": str(self._config.ttl_s), "Urgency": job.urgency,
                   "Topic": topic(job.conversation_id, _b64(record["auth"])),
                   "Content-Encoding": "aes128gcm",
                   "Content-Type": "application/octet-stream",
                   "Authorization": self._vapid.authorization(target.origin)}
        response = await self._post(target, headers, body)
        if response.status_code in (404, 410):
            raise _Gone(f"the push service answered {response.status_code}")
        _check(response)

    async def _gateway(self, job: PushJob) -> None:
        record = job.record
        target = self._resolver.parse(record["url"], "url")
        notification = {**job.data, "prio": "high" if job.urgency == "high" else "low",
                        "devices": [{"app_id": record["app_id"],
                                     "pushkey": record["pushkey"]}]}
        body = json.dumps({"notification": notification}, separators=(",", ":")).encode()
        response = await self._post(target, {"Content-Type": "application/json"}, body)
        if response.status_code in (404, 410):
            raise _Gone(f"the gateway answered {response.status_code}")
        _check(response)
        try:
            rejected = response.json().get("rejected", [])
        except (ValueError, AttributeError):
            rejected = []
        if isinstance(rejected, list) and record["pushkey"] in rejected:
            raise _Gone("the gateway rejected the pushkey")

    async def _post(self, target: Target, headers: dict[str, str],
                    body: bytes) -> httpx.Response:
        """POST to the address the guard checked (not a second resolution): the host name
        goes in Host, and in TLS's SNI and certificate check."""
        address = await self._resolver.address_of(target)
        shown = f"[{address}]" if address.version == 6 else str(address)
        url = httpx.URL(target.url).copy_with(host=shown.strip("[]"))
        default = 443 if target.scheme == "https" else 80
        host = f"[{target.host}]" if ":" in target.host else target.host
        headers = {**headers, "Host": host if target.port == default
                   else f"{host}:{target.port}"}
        return await self._client_for(target).post(url, content=body, headers=headers,
                                       extensions={"sni_hostname": target.host})

    def prometheus(self) -> list[str]:
        stats = self.stats
        lines = ["# TYPE chatd_push_sent_total counter"]
        lines += [f'chatd_push_sent_total{{kind="{kind}"}} {count}'
                  for kind, count in sorted(stats.sent.items())]
        lines.append("# TYPE chatd_push_failed_total counter")
        lines += [f'chatd_push_failed_total{{kind="{kind}"}} {count}'
                  for kind, count in sorted(stats.failed.items())]
        lines += ["# TYPE chatd_push_dropped_total counter",
                  f"chatd_push_dropped_total {stats.dropped}",
                  "# TYPE chatd_push_retried_total counter",
                  f"chatd_push_retried_total {stats.retried}",
                  "# TYPE chatd_push_subscriptions_removed_total counter",
                  f"chatd_push_subscriptions_removed_total {stats.gone}",
                  "# TYPE chatd_push_queued gauge", f"chatd_push_queued {self.queued}"]
        return lines


class _Gone(Exception):
    """The subscription no longer exists at the push service."""


class _Failed(Exception):
    """Refused for good (a 4xx other than 404, 410, 429)."""


def _check(response: httpx.Response) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    if status == 429:
        raise _Retry("429", retry_after(response.headers.get("retry-after")))
    if status >= 500:
        raise _Retry(str(status), retry_after(response.headers.get("retry-after")))
    raise _Failed(f"answered {status}")


def retry_after(value: str | None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def encrypt(plaintext: bytes, p256dh: str, auth: str) -> bytes:
    """RFC 8291: aes128gcm with a fresh ephemeral key and salt per push."""
    ephemeral = ec.generate_private_key(ec.SECP256R1())
    result: bytes = http_ece.encrypt(plaintext, private_key=ephemeral, dh=_b64(p256dh),
                                     auth_secret=_b64(auth), version="aes128gcm")
    return result


def _b64(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def _target_of(record: dict[str, Any]) -> str:
    return str(record.get("endpoint") or record.get("url") or "")


def _origin_key(url: str) -> str:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        return url
    return f"{parsed.scheme}://{parsed.host}:{parsed.port}"
