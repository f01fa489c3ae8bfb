"""The home's side of what an operator does to an account, and of an erasure's first step.

`account_state` (storage/records.py) holds, per user homed here, what was done to the
account: deactivated (by an operator: every token revoked, logins refused with 403
`account_deactivated`, undone by reactivating), erasing (an erasure began and has steps
left on other shards), erased (every step done). Everything here runs on the user's home;
other shards reach it through `requests` (`home.admin_*` mesh requests), and both doors
run the same handlers (services/shard_calls.py).

An erasure's first step is one batch here (`begin_erase`): the "erasing" mark, the
profile replaced by a tombstone ("deleted account": no handle, status, photo or password
hash), the handle freed, every device and token revoked (their sockets closed), last
seen deleted. The mark is written first in that batch, so a crash before the rest of the
erasure has run leaves a mark that `Gdpr.run_sweeper` finds and finishes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from chatd.domain.models import Device, User
from chatd.errors import Forbidden, NotFound, Unauthorized
from chatd.services.accounts import AccountService
from chatd.services.clock import Clock
from chatd.services.commands import Commands
from chatd.services.peer_bodies import int_field
from chatd.services.users import device_to_wire, user_to_wire
from chatd.storage import Batch, Store, records

#: What an erased account's profile shows.
ERASED_NAME = "deleted account"
#: Users one listing page scans at most (a handle filter that matches few must not scan
#: every user in one request); the page says where to go on.
LIST_SCAN = 10_000

#: An erase hook: `hook(user_id)` drops what a later service keeps of the user on their
#: home (end-to-end keys, delivery queues, push subscriptions). It must be idempotent: an
#: interrupted erasure runs every hook again.
EraseHook = Callable[[int], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class AccountState:
    deactivated_at: int = 0
    erasing_since: int = 0
    erased_at: int = 0
    #: The profile photo an erasure still has to release (0: none).
    photo: int = 0

    @classmethod
    def from_record(cls, data: Any) -> AccountState:
        if not isinstance(data, dict):
            return cls()
        known = {item.name for item in dataclasses.fields(cls)}
        return cls(**{key: int(value) for key, value in data.items() if key in known})

    def to_record(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @property
    def status(self) -> str:
        if self.erased_at:
            return "erased"
        if self.erasing_since:
            return "erasing"
        if self.deactivated_at:
            return "deactivated"
        return "active"


class AccountAdmin:
    def __init__(self, *, store: Store, commands: Commands, accounts: AccountService,
                 clock: Clock) -> None:
        self._store = store
        self._commands = commands
        self._accounts = accounts
        self._clock = clock
        accounts.login_checks.append(self._check_login)
        #: Services added later that keep data about a user on their home register here
        #: (see EraseHook). None exist yet: end-to-end keys and push are later issues.
        self.erase_hooks: list[EraseHook] = []
        #: Services that keep data about a user on their home add a document to their
        #: data export here: `part(user_id) -> (file name, JSON value)`.
        self.export_parts: list[Callable[[int], tuple[str, Any]]] = []
        #: What later services add to a device's entry in an export (devices.json), by
        #: (user_id, device_id): services/key_directory.py adds its public identity keys.
        self.device_export: list[Callable[[int, int], dict[str, Any]]] = []
        self.requests: dict[str, Callable[[dict[str, Any]], Any]] = {
            "home.admin_show": self._show_request,
            "home.admin_deactivate": self._deactivate_request,
            "home.admin_reactivate": self._reactivate_request,
            "home.export_profile": self._export_profile_request,
        }

    # -- state -----------------------------------------------------------------------------

    def state(self, user_id: int) -> AccountState:
        return AccountState.from_record(self._store.get(records.ACCOUNT_STATE, user_id))

    def _put_state(self, batch: Batch, user_id: int, state: AccountState) -> None:
        if state == AccountState():
            batch.delete(records.ACCOUNT_STATE, user_id)
        else:
            batch.put(records.ACCOUNT_STATE, user_id, state.to_record())

    def _check_login(self, user_id: int) -> None:
        state = self.state(user_id)
        if state.erasing_since or state.erased_at:
            raise Unauthorized("wrong handle or password", code="bad_credentials")
        if state.deactivated_at:
            raise Forbidden("this account has been deactivated by the server's operator",
                            code="account_deactivated")

    def erasing(self) -> list[int]:
        """Users homed here whose erasure began and has not finished."""
        return [user_id for user_id, data in self._store.scan(records.ACCOUNT_STATE, b"")
                if AccountState.from_record(data).erasing_since]

    # -- operator actions --------------------------------------------------------------------

    async def deactivate(self, user_id: int) -> AccountState:
        """Revoke every device and token (sockets closed) and refuse logins until
        `reactivate`."""
        self._accounts.get_user(user_id)  # 404 for nobody

        def apply(batch: Batch) -> AccountState:
            state = self.state(user_id)
            if not state.deactivated_at:
                state = dataclasses.replace(state, deactivated_at=self._clock.now_ms())
            self._put_state(batch, user_id, state)
            self._accounts.revoke_all_in(batch, user_id)
            return state

        result: AccountState = await self._commands.submit(apply)
        return result

    async def reactivate(self, user_id: int) -> AccountState:
        self._accounts.get_user(user_id)

        def apply(batch: Batch) -> AccountState:
            state = dataclasses.replace(self.state(user_id), deactivated_at=0)
            self._put_state(batch, user_id, state)
            return state

        result: AccountState = await self._commands.submit(apply)
        return result

    def list_users(self, *, after: int, handle_prefix: str, limit: int
                   ) -> tuple[list[tuple[User, AccountState]], int]:
        """Users homed here in id order after `after`, whose handle starts with
        `handle_prefix` (case-insensitive), at most `limit`; and the id to list after
        next (0: no more)."""
        prefix = handle_prefix.lower()
        found: list[tuple[User, AccountState]] = []
        cursor = records.u64(after) if after else None
        scanned = 0
        while scanned < LIST_SCAN:
            page = self._store.scan(records.USERS, b"", after=cursor,
                                    limit=min(1000, LIST_SCAN - scanned))
            if not page:
                return found, 0
            scanned += len(page)
            for user_id, user in page:
                if user.handle.lower().startswith(prefix) if prefix else True:
                    found.append((user, self.state(user_id)))
                    if len(found) >= limit:
                        return found, user_id
            cursor = records.u64(page[-1][0])
        return found, read_last(cursor)

    # -- erasure ---------------------------------------------------------------------------------

    async def verify_password(self, user_id: int, password: str) -> None:
        await self._accounts.verify_password(user_id, password)

    async def begin_erase(self, user_id: int) -> AccountState:
        """The home's step of an erasure, in one batch (module docstring). Idempotent:
        an erasure already begun is begun again harmlessly; an erased account stays so."""
        self._accounts.get_user(user_id)  # 404 for nobody

        def apply(batch: Batch) -> AccountState:
            state = self.state(user_id)
            if state.erased_at:
                return state
            user = self._accounts.get_user(user_id)
            if not state.erasing_since:
                state = dataclasses.replace(state, erasing_since=self._clock.now_ms(),
                                            photo=user.photo_media_id)
            self._put_state(batch, user_id, state)
            if user.handle and self._store.get(records.HANDLES, user.handle) == user_id:
                batch.delete(records.HANDLES, user.handle)
            self._accounts.write_user(batch, tombstone(user))
            # An overwrite is not a delete: ask the purge (storage/purge.py) to compact
            # the old profile's versions off the disk as it does deleted records.
            batch.after_commit.append(lambda: self._store.want_purge(
                {records.USERS.name: {records.u64(user_id)}}))
            self._accounts.revoke_all_in(batch, user_id)
            batch.delete(records.LAST_SEEN, user_id)
            return state

        result: AccountState = await self._commands.submit(apply)
        return result

    async def run_erase_hooks(self, user_id: int) -> None:
        for hook in self.erase_hooks:
            await hook(user_id)

    async def photo_released(self, user_id: int) -> None:
        await self._commands.submit(lambda batch: self._put_state(
            batch, user_id, dataclasses.replace(self.state(user_id), photo=0)))

    async def finish_erase(self, user_id: int) -> None:
        def apply(batch: Batch) -> None:
            state = self.state(user_id)
            if state.erased_at:
                return
            self._put_state(batch, user_id, dataclasses.replace(
                state, erasing_since=0, erased_at=self._clock.now_ms(), photo=0))

        await self._commands.submit(apply)

    # -- what the home tells (mesh requests; the local door calls the same handlers) ---------

    def _show_request(self, body: dict[str, Any]) -> Any:
        user_id = int_field(body, "user_id")
        user = self._accounts.get_user(user_id)
        devices = self._store.scan(records.DEVICES, records.u64(user_id))
        return {"user": user_to_wire(user), "state": self.state(user_id).to_record(),
                "devices": [device_to_wire(device) for _, device in devices]}

    async def _deactivate_request(self, body: dict[str, Any]) -> Any:
        return (await self.deactivate(int_field(body, "user_id"))).to_record()

    async def _reactivate_request(self, body: dict[str, Any]) -> Any:
        return (await self.reactivate(int_field(body, "user_id"))).to_record()

    def _export_profile_request(self, body: dict[str, Any]) -> Any:
        """Everything the home holds about the user that an export shows: never the
        password hash nor token hashes."""
        user_id = int_field(body, "user_id")
        user = self._accounts.get_user(user_id)
        if self.state(user_id).erased_at:
            raise NotFound(f"no user with id {user_id}", code="unknown_user")
        devices = [device for _, device in self._store.scan(records.DEVICES,
                                                             records.u64(user_id))]
        return {
            "profile": {"user_id": str(user.user_id), "handle": user.handle,
                        "display_name": user.display_name, "status": user.status_text,
                        "created_at": user.created_at,
                        "photo_media_id": str(user.photo_media_id) if user.photo_media_id
                        else None},
            "settings": {"hide_last_seen": user.hide_last_seen,
                         "read_receipts": user.read_receipts,
                         # The privacy settings (PATCH /me/privacy).
                         "privacy": {"last_seen": user.last_seen_setting,
                                     "profile": user.profile_visibility,
                                     "groups_add": user.groups_add,
                                     "read_receipts": user.read_receipts}},
            "devices": [self._device_entry(device) for device in devices],
            "last_seen": self._store.get(records.LAST_SEEN, user_id),
            "blocks": [{"user_id": str(blocked), "blocked_at": at} for (_, blocked), at
                       in self._store.scan(records.BLOCKS, records.u64(user_id))],
            "parts": dict(part(user_id) for part in self.export_parts),
        }

    def _device_entry(self, device: Device) -> dict[str, Any]:
        entry: dict[str, Any] = {"device_id": str(device.device_id), "name": device.name,
                                 "created_at": device.created_at}
        for extra in self.device_export:
            entry.update(extra(device.user_id, device.device_id))
        return entry


def tombstone(user: User) -> User:
    """What stays of an erased user: their id (messages and members lists name it) and
    when the account was made; nothing they chose or wrote."""
    return User(user.user_id, "", ERASED_NAME, b"", user.created_at, "",
                hide_last_seen=True, read_receipts=False, photo_media_id=0)


def read_last(cursor: bytes | None) -> int:
    return records.read_u64(cursor) if cursor else 0
