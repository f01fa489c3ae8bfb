"""Accounts, devices, bearer tokens and profiles of the users homed on this shard.

This is the home's side; every other part of chatd calls `Users` (services/users.py),
which brings each call here or to the user's home across the mesh.

Tokens are 256-bit random strings; only their SHA-256 is stored, so a copy of the database
does not hand out sessions. Every login creates a device holding one token; revoking the
device (or logging out) deletes both, which is what makes tokens revocable.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import trio

from chatd.config import AuthConfig
from chatd.domain import privacy, rules
from chatd.domain.ids import SnowflakeGenerator
from chatd.domain.models import Device, Session, TokenRecord, User
from chatd.errors import BadRequest, ChatdError, Conflict, Forbidden, NotFound, Unauthorized
from chatd.services.clock import Clock
from chatd.services.commands import Commands
from chatd.services.passwords import PasswordHasher
from chatd.services.ratelimits import RateLimits
from chatd.storage import Batch, Store, records

log = logging.getLogger(__name__)

TOKEN_PREFIX = "chatd_"
_DAY_MS = 86_400_000
#: Users whose read-receipts setting is kept in memory (cleared past this).
_SETTINGS_CACHE = 100_000


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True, slots=True)
class LoginResult:
    token: str
    user: User
    device: Device
    expires_at: int


class AccountService:
    def __init__(self, *, store: Store, commands: Commands, token_prefix: str,
                 ids: SnowflakeGenerator, clock: Clock, hasher: PasswordHasher,
                 config: AuthConfig, ratelimits: RateLimits) -> None:
        self._store = store
        self._commands = commands
        #: Every token minted here starts with it: it names this shard, the user's home
        #: (services/users.py), so any shard knows where to check a token.
        self._token_prefix = token_prefix
        self._ids = ids
        self._clock = clock
        self._hasher = hasher
        self._config = config
        # Checked here, at the handle's home, which sees every attempt at a handle
        # whichever shard the client reached (and before a password hash is spent).
        self._ratelimits = ratelimits
        # Handles being registered right now: a second registration of the same handle
        # is refused before it spends a password hash.
        self._registering: set[str] = set()
        # Users changed by commands whose batch has not landed yet; reads see these first
        # so two profile edits in one batch do not undo each other.
        self._pending_users: dict[int, User] = {}
        self._read_receipts: dict[int, bool] = {}
        # Logins applied in a batch that has not landed yet, per user (the device cap).
        self._unlanded_logins: dict[int, int] = {}
        self._profile_listeners: list[Callable[[User], None]] = []
        self._revocation_listeners: list[Callable[[int, int], None]] = []
        #: Called with the user id of each login whose password matched, before a device
        #: is made: raising refuses the login (services/account_admin.py: deactivated).
        self.login_checks: list[Callable[[int], None]] = []
        #: Called with (batch, user_id, device_id) for each device deleted in `batch`
        #: (logout, revocation, expiry, erasure): what else a device holds on its home
        #: goes in the same write (services/key_directory.py: its end-to-end keys).
        self.device_deleters: list[Callable[[Batch, int, int], None]] = []

    def forget_pending(self) -> None:
        """After a failed batch write: pending changes never reached the disk."""
        self._pending_users.clear()
        self._unlanded_logins.clear()

    # -- registration and login -----------------------------------------------------------

    async def register(self, *, handle: str, password: str, display_name: str,
                       client: str) -> User:
        handle = rules.normalize_handle(handle)
        rules.check_password(password, self._config.min_password_length)
        display_name = rules.clean_text(display_name, "display_name",
                                        max_length=rules.MAX_DISPLAY_NAME)
        self._ratelimits.take("register", address=client)
        if handle in self._registering or self._store.get(records.HANDLES, handle) is not None:
            raise Conflict("that handle is already taken", code="handle_taken")
        self._registering.add(handle)
        try:
            password_hash = await self._hasher.hash(password)

            def apply(batch: Batch) -> User:
                if self._store.get(records.HANDLES, handle) is not None:
                    raise Conflict("that handle is already taken", code="handle_taken")
                user = User(self._ids.next_id(), handle, display_name, password_hash,
                            self._clock.now_ms())
                batch.put(records.USERS, user.user_id, user)
                batch.put(records.HANDLES, handle, user.user_id)
                return user

            return await self._commands.submit(apply)
        finally:
            self._registering.discard(handle)

    async def login(self, *, handle: str, password: str, device_name: str,
                    client: str) -> LoginResult:
        device_name = rules.clean_text(device_name or "unnamed device", "device_name",
                                       max_length=rules.MAX_DEVICE_NAME)
        try:
            normalized: str | None = rules.normalize_handle(handle)
        except BadRequest:
            normalized = None
        # Per handle whether it exists or not: a refusal must not tell which.
        self._ratelimits.take("login", account=normalized, address=client)
        user_id = self._store.get(records.HANDLES, normalized) if normalized else None
        user = self._user(user_id) if user_id is not None else None
        verified = await self._hasher.verify(user.password_hash if user else None, password)
        if user is None or not verified:
            # One answer for an unknown handle and a wrong password.
            raise Unauthorized("wrong handle or password", code="bad_credentials")
        for check in self.login_checks:
            check(user.user_id)
        token = self._token_prefix + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
        token = token.rstrip("=")
        token_hash = hash_token(token)
        now = self._clock.now_ms()
        expires_at = now + int(self._config.token_ttl_days * _DAY_MS)
        device = Device(user.user_id, self._ids.next_id(), device_name, now, token_hash)

        def apply(batch: Batch) -> None:
            held = self._prune_devices_of(batch, user.user_id, now)
            held += self._unlanded_logins.get(user.user_id, 0)
            if held >= self._config.max_devices:
                raise Conflict(f"this account already has {held} devices, the most it may "
                               "have; log one out first (DELETE /devices/{device_id})",
                               code="too_many_devices")
            batch.put(records.DEVICES, (user.user_id, device.device_id), device)
            batch.put(records.TOKENS, token_hash,
                      TokenRecord(user.user_id, device.device_id, expires_at))
            # Counted until it lands, so logins in one batch cannot pass the cap together.
            self._unlanded_logins[user.user_id] = self._unlanded_logins.get(user.user_id, 0) + 1
            batch.after_commit.append(partial(self._login_landed, user.user_id))

        await self._commands.submit(apply)
        return LoginResult(token, user, device, expires_at)

    def _devices_of(self, user_id: int) -> list[Device]:
        return [device for _, device in self._store.scan(records.DEVICES,
                                                          records.u64(user_id))]

    def _delete_device(self, batch: Batch, device: Device) -> None:
        """The device, its token and its delivery cursors."""
        batch.delete(records.DEVICES, (device.user_id, device.device_id))
        batch.delete(records.TOKENS, device.token_hash)
        for deleter in self.device_deleters:
            deleter(batch, device.user_id, device.device_id)
        for (_, conversation_id), _seq in self._store.scan(records.CURSORS,
                                                           records.u64(device.device_id)):
            batch.delete(records.CURSORS, (device.device_id, conversation_id))

    def _login_landed(self, user_id: int) -> None:
        count = self._unlanded_logins.pop(user_id, 1) - 1
        if count > 0:
            self._unlanded_logins[user_id] = count

    def _prune_devices_of(self, batch: Batch, user_id: int, now: int) -> int:
        """Delete the user's devices whose token has expired (or is gone); returns how
        many devices remain."""
        remaining = 0
        for device in self._devices_of(user_id):
            record = self._store.get(records.TOKENS, device.token_hash)
            if record is None or record.expires_at <= now:
                self._delete_device(batch, device)
            else:
                remaining += 1
        return remaining

    async def prune_expired(self, *, page_size: int = 1000) -> int:
        """Delete every device whose token has expired, a page of tokens at a time (the
        loop serves others between pages); returns how many were deleted."""
        deleted = 0
        after = b""
        while page := self._store.scan(records.TOKENS, b"", after=after or None,
                                       limit=page_size):
            after = page[-1][0]
            now = self._clock.now_ms()
            expired = [record for _, record in page if record.expires_at <= now]
            if expired:
                deleted += await self._commands.submit(partial(self._delete_expired, expired))
            else:
                await trio.lowlevel.checkpoint()
        return deleted

    def _delete_expired(self, expired: list[TokenRecord], batch: Batch) -> int:
        deleted = 0
        for record in expired:
            device = self._store.get(records.DEVICES, (record.user_id, record.device_id))
            if device is not None:
                self._delete_device(batch, device)
                deleted += 1
        return deleted

    async def run_pruner(self) -> None:
        """Prune expired devices now and every `auth.prune_interval` seconds."""
        while True:
            try:
                deleted = await self.prune_expired()
            except ChatdError as exc:  # shutting down, or the disk refused: try next time
                log.warning("pruning expired devices stopped early: %s", exc.message)
            else:
                if deleted:
                    log.info("pruned %d expired devices", deleted)
            await trio.sleep(self._config.prune_interval)

    def authenticate(self, token: str) -> Session:
        token_hash = hash_token(token)
        record = self._store.get(records.TOKENS, token_hash)
        if record is None:
            raise Unauthorized("the token is not valid (revoked, or never issued); log in again",
                               code="invalid_token")
        if record.expires_at <= self._clock.now_ms():
            raise Unauthorized("the token has expired; log in again", code="token_expired")
        return Session(record.user_id, record.device_id, token_hash, record.expires_at)

    # -- devices --------------------------------------------------------------------------

    def list_devices(self, session: Session) -> list[Device]:
        return self._devices_of(session.user_id)

    async def revoke_device(self, session: Session, device_id: int) -> None:
        device = self._store.get(records.DEVICES, (session.user_id, device_id))
        if device is None:
            raise NotFound("you have no device with that id", code="unknown_device")

        def apply(batch: Batch) -> None:
            self._delete_device(batch, device)
            for listener in self._revocation_listeners:
                batch.after_commit.append(partial(listener, device.user_id, device.device_id))

        await self._commands.submit(apply)

    async def logout(self, session: Session) -> None:
        await self.revoke_device(session, session.device_id)

    def revoke_all_in(self, batch: Batch, user_id: int) -> int:
        """Every device of the user, with its token and cursors, deleted in `batch`; their
        sockets are closed once it lands (the revocation listeners). Returns how many."""
        devices = self._devices_of(user_id)
        for device in devices:
            self._delete_device(batch, device)
            for listener in self._revocation_listeners:
                batch.after_commit.append(partial(listener, user_id, device.device_id))
        return len(devices)

    async def verify_password(self, user_id: int, password: str) -> None:
        """403 `wrong_password` unless `password` is the user's (an argon2 verify, like a
        login, and rate limited like one, per user). Not a 401: the caller's token is
        good, and a client must not take this for a session that ended."""
        # Each attempt costs a password hash, as a login does: the login bucket, per account.
        self._ratelimits.take("login", account=f"user:{user_id}")
        user = self._user(user_id)
        hashed = user.password_hash if user is not None and user.password_hash else None
        if not await self._hasher.verify(hashed, password) or hashed is None:
            raise Forbidden("wrong password", code="wrong_password")

    def write_user(self, batch: Batch, user: User) -> None:
        """Replace the user's record in `batch` (reads see it at once, as a profile edit)."""
        batch.put(records.USERS, user.user_id, user)
        self._pending_users[user.user_id] = user
        batch.after_commit.append(lambda: self._settle(user))

    # -- profiles -------------------------------------------------------------------------

    def _user(self, user_id: int) -> User | None:
        return self._pending_users.get(user_id) or self._store.get(records.USERS, user_id)

    def get_user(self, user_id: int) -> User:
        user = self._user(user_id)
        if user is None:
            raise NotFound(f"no user with id {user_id}", code="unknown_user")
        return user

    def find_by_handle(self, handle: str) -> User:
        user_id = self._store.get(records.HANDLES, rules.normalize_handle(handle))
        if user_id is None:
            raise NotFound("no user has that handle", code="unknown_user")
        return self.get_user(user_id)

    def require_users_exist(self, user_ids: list[int]) -> None:
        for user_id in user_ids:
            self.get_user(user_id)

    async def update_profile(self, session: Session, *, display_name: str | None,
                             status_text: str | None, hide_last_seen: bool | None = None,
                             read_receipts: bool | None = None,
                             photo_media_id: int | None = None,
                             last_seen: str | None = None, profile: str | None = None,
                             groups_add: str | None = None) -> User:
        """`photo_media_id`: the new photo's media id, 0 to remove it (the media service
        checked and counted it: routes_accounts.py). `last_seen`, `profile` and
        `groups_add` are the privacy settings (domain/privacy.py); `hide_last_seen`
        predates them: true is last_seen "nobody", false lifts "nobody" to "everyone"."""
        privacy.check_settings(last_seen=last_seen, profile=profile, groups_add=groups_add)
        if display_name is not None:
            display_name = rules.clean_text(display_name, "display_name",
                                            max_length=rules.MAX_DISPLAY_NAME)
        if status_text is not None:
            status_text = rules.clean_text(status_text, "status", allow_empty=True,
                                           max_length=rules.MAX_STATUS_TEXT)

        def apply(batch: Batch) -> User:
            user = self.get_user(session.user_id)
            user = privacy.with_settings(user, hide_last_seen=hide_last_seen,
                                         last_seen=last_seen, profile=profile,
                                         groups_add=groups_add)
            updated = dataclasses.replace(
                user,
                display_name=user.display_name if display_name is None else display_name,
                status_text=user.status_text if status_text is None else status_text,
                read_receipts=user.read_receipts if read_receipts is None else read_receipts,
                photo_media_id=user.photo_media_id if photo_media_id is None
                else photo_media_id)
            batch.put(records.USERS, updated.user_id, updated)
            self._pending_users[updated.user_id] = updated
            batch.after_commit.append(lambda: self._settle(updated))
            for listener in self._profile_listeners:
                batch.after_commit.append(partial(listener, updated))
            return updated

        return await self._commands.submit(apply)

    def shares_read_receipts(self, user_id: int) -> bool:
        """The user's `read_receipts` setting (cached: receipts ask for every move)."""
        shared = self._read_receipts.get(user_id)
        if shared is None:
            user = self._user(user_id)
            # Fails closed: a user we cannot see is treated as sharing nothing.
            shared = user.read_receipts if user is not None else False
            if len(self._read_receipts) >= _SETTINGS_CACHE:
                self._read_receipts.clear()
            self._read_receipts[user_id] = shared
        return shared

    def on_device_revoked(self, listener: Callable[[int, int], None]) -> None:
        """Call `listener(user_id, device_id)` once a device's revocation is durable."""
        self._revocation_listeners.append(listener)

    def record_last_seen(self, user_id: int, ts: int) -> None:
        """Remember when the user's last socket closed (best effort, not awaited)."""
        # Shutting down or overloaded: presence is ephemeral, losing it is fine.
        with contextlib.suppress(ChatdError):
            self._commands.enqueue(lambda batch: batch.put(records.LAST_SEEN, user_id, ts))

    def on_profile_change(self, listener: Callable[[User], None]) -> None:
        """Call `listener` with the new profile once a profile change is durable."""
        self._profile_listeners.append(listener)

    def _settle(self, user: User) -> None:
        self._read_receipts[user.user_id] = user.read_receipts
        if self._pending_users.get(user.user_id) is user:
            del self._pending_users[user.user_id]
