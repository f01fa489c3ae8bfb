"""Accounts from any shard: each call goes to the user's (or the handle's) home.

`AccountService` (services/accounts.py) is the home's side: it holds users, handles,
devices, tokens and profiles, and only for users homed on its shard. `Users` is what
everything else calls. It finds the home (a handle's from the ring, a user's from the
shard number in their id, a token's from the number in the token) and calls it here or
across the mesh; both ways return the same values. So a handle is unique cluster-wide
(its home serialises every registration of it), and any shard can authenticate any
user.

Wire forms (mesh requests, method -> body -> answer) are next to `HomeApi`, the
receiving side, at the end of this module.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from typing import Any

import trio

from chatd.domain import rules
from chatd.domain.models import Device, Session, User
from chatd.errors import BadRequest, ChatdError
from chatd.services.accounts import TOKEN_PREFIX, AccountService, LoginResult
from chatd.services.peer_bodies import ids_field as _ids
from chatd.services.peer_bodies import int_field as _int
from chatd.services.peer_bodies import optional_field as _optional
from chatd.services.peer_bodies import text_field as _str
from chatd.services.routing import Router

#: Seconds a forwarded registration or login may take at the home: a password hash waits
#: its turn there (auth.hash_concurrency), and giving up early would leave an account or
#: a device made whose answer nobody gets.
PASSWORD_TIMEOUT = 15.0
#: How many hex digits of a token name its home shard's number (0..3ff).
_TOKEN_HOME_DIGITS = 3


def token_home_number(token: str) -> int | None:
    """The home shard number a token names, or None for a token without one."""
    digits = token[len(TOKEN_PREFIX):len(TOKEN_PREFIX) + _TOKEN_HOME_DIGITS]
    if not token.startswith(TOKEN_PREFIX) or len(digits) != _TOKEN_HOME_DIGITS:
        return None
    try:
        return int(digits, 16)
    except ValueError:
        return None


def token_prefix_for(number: int) -> str:
    """What every token minted on shard `number` starts with."""
    return f"{TOKEN_PREFIX}{number:0{_TOKEN_HOME_DIGITS}x}"


class Users:
    def __init__(self, *, router: Router, accounts: AccountService,
                 numbers: dict[str, int]) -> None:
        self._router = router
        self._accounts = accounts
        self._by_number = {number: name for name, number in numbers.items()}

    # -- where ----------------------------------------------------------------------------

    def _home_of_handle(self, handle: str) -> str:
        try:
            return self._router.home_of_handle(rules.normalize_handle(handle))
        except BadRequest:
            return self._router.shard  # a handle nobody can have: refused here

    def _home_of_token(self, token: str) -> str:
        number = token_home_number(token)
        shard = self._by_number.get(number) if number is not None else None
        return shard or self._router.shard  # an unknown token is refused here

    def _is_local(self, shard: str) -> bool:
        return shard == self._router.shard

    async def _ask(self, shard: str, method: str, body: dict[str, Any], *,
                   timeout: float | None = None) -> Any:  # noqa: ASYNC109  # the request's deadline, sent to the peer
        return await self._router.ask_peer(shard, method, body, what="home", timeout=timeout)

    # -- registration, login, tokens ----------------------------------------------------------

    async def register(self, *, handle: str, password: str, display_name: str,
                       client: str) -> User:
        home = self._home_of_handle(handle)
        if self._is_local(home):
            return await self._accounts.register(handle=handle, password=password,
                                                 display_name=display_name, client=client)
        return user_from_wire(await self._ask(home, "home.register", {
            "handle": handle, "password": password, "display_name": display_name,
            "client": client}, timeout=PASSWORD_TIMEOUT))

    async def login(self, *, handle: str, password: str, device_name: str,
                    client: str) -> LoginResult:
        home = self._home_of_handle(handle)
        if self._is_local(home):
            return await self._accounts.login(handle=handle, password=password,
                                              device_name=device_name, client=client)
        data = await self._ask(home, "home.login", {
            "handle": handle, "password": password, "device_name": device_name,
            "client": client}, timeout=PASSWORD_TIMEOUT)
        return LoginResult(data["token"], user_from_wire(data["user"]),
                           device_from_wire(data["device"]), data["expires_at"])

    async def authenticate(self, token: str) -> Session:
        home = self._home_of_token(token)
        if self._is_local(home):
            return self._accounts.authenticate(token)
        user_id, device_id, token_hash, expires_at = await self._ask(
            home, "home.authenticate", {"token": token})
        return Session(user_id, device_id, token_hash, expires_at)

    async def list_devices(self, session: Session) -> list[Device]:
        home = self._router.home_of_user(session.user_id)
        if self._is_local(home):
            return self._accounts.list_devices(session)
        return [device_from_wire(item) for item in await self._ask(
            home, "home.devices", {"user_id": session.user_id})]

    async def revoke_device(self, session: Session, device_id: int) -> None:
        home = self._router.home_of_user(session.user_id)
        if self._is_local(home):
            await self._accounts.revoke_device(session, device_id)
            return
        await self._ask(home, "home.revoke_device",
                        {"user_id": session.user_id, "device_id": device_id})

    async def logout(self, session: Session) -> None:
        await self.revoke_device(session, session.device_id)

    # -- profiles ---------------------------------------------------------------------------------

    async def get_user(self, user_id: int) -> User:
        home = self._router.home_of_user(user_id)
        if self._is_local(home):
            return self._accounts.get_user(user_id)
        return user_from_wire(await self._ask(home, "home.user", {"user_id": user_id}))

    async def find_by_handle(self, handle: str) -> User:
        home = self._home_of_handle(handle)
        if self._is_local(home):
            return self._accounts.find_by_handle(handle)
        return user_from_wire(await self._ask(home, "home.find_handle", {"handle": handle}))

    async def require_users_exist(self, user_ids: list[int]) -> None:
        for home, users in self._by_home(user_ids).items():
            if self._is_local(home):
                self._accounts.require_users_exist(users)
            else:
                await self._ask(home, "home.users_exist", {"user_ids": users})

    async def read_receipt_settings(self, user_ids: list[int]) -> dict[int, bool]:
        """Whether each user shares read receipts; a user whose home cannot be asked is
        treated as sharing nothing (privacy fails closed)."""
        settings: dict[int, bool] = {}
        for home, users in self._by_home(user_ids).items():
            if self._is_local(home):
                settings.update((user, self._accounts.shares_read_receipts(user))
                                for user in users)
                continue
            with contextlib.suppress(ChatdError):
                settings.update((user, bool(shared)) for user, shared in await self._ask(
                    home, "home.read_settings", {"user_ids": users}))
        return {user: settings.get(user, False) for user in user_ids}

    async def update_profile(self, session: Session, *, display_name: str | None,
                             status_text: str | None, hide_last_seen: bool | None = None,
                             read_receipts: bool | None = None,
                             photo_media_id: int | None = None,
                             last_seen: str | None = None, profile: str | None = None,
                             groups_add: str | None = None) -> User:
        home = self._router.home_of_user(session.user_id)
        if self._is_local(home):
            return await self._accounts.update_profile(
                session, display_name=display_name, status_text=status_text,
                hide_last_seen=hide_last_seen, read_receipts=read_receipts,
                photo_media_id=photo_media_id, last_seen=last_seen, profile=profile,
                groups_add=groups_add)
        return user_from_wire(await self._ask(home, "home.update_profile", {
            "user_id": session.user_id, "display_name": display_name,
            "status_text": status_text, "hide_last_seen": hide_last_seen,
            "read_receipts": read_receipts, "photo_media_id": photo_media_id,
            "last_seen": last_seen, "profile": profile, "groups_add": groups_add}))

    async def ask_home(self, user_id: int, method: str, body: dict[str, Any],
                       local: Callable[[dict[str, Any]], Any]) -> Any:
        """A `home.*` request for the user's home: `local` (the handler of that
        request here) when it is this shard, else over the mesh."""
        home = self._router.home_of_user(user_id)
        if self._is_local(home):
            result = local(body)
            return await result if inspect.isawaitable(result) else result
        return await self._ask(home, method, body)

    def record_last_seen(self, user_id: int, ts: int) -> None:
        """Best effort, not awaited (presence may be lost)."""
        home = self._router.home_of_user(user_id)
        if self._is_local(home):
            self._accounts.record_last_seen(user_id, ts)
        elif self._router.peers is not None:
            self._router.peers.post(home, "home.last_seen", {"user_id": user_id, "ts": ts})

    def post_cursor_hints(self, user_id: int, hints: list[tuple[int, int, int]]) -> None:
        """Acks' cursor hints (device, conversation, seq) for the user's home."""
        home = self._router.home_of_user(user_id)
        if self._router.peers is not None:
            self._router.peers.post(home, "home.cursor_hints",
                                    {"hints": [list(hint) for hint in hints]})

    def _by_home(self, user_ids: list[int]) -> dict[str, list[int]]:
        by_home: dict[str, list[int]] = {}
        for user_id in user_ids:
            by_home.setdefault(self._router.home_of_user(user_id), []).append(user_id)
        return by_home


# -- wire forms -------------------------------------------------------------------------------

def user_to_wire(user: User) -> dict[str, Any]:
    """A user for another shard: everything but the password hash."""
    return {"user_id": user.user_id, "handle": user.handle,
            "display_name": user.display_name, "created_at": user.created_at,
            "status_text": user.status_text, "hide_last_seen": user.hide_last_seen,
            "read_receipts": user.read_receipts, "photo_media_id": user.photo_media_id,
            "last_seen": user.last_seen_visibility, "profile": user.profile_visibility,
            "groups_add": user.groups_add}


def user_from_wire(data: Any) -> User:
    return User(data["user_id"], data["handle"], data["display_name"], b"",
                data["created_at"], data["status_text"], bool(data["hide_last_seen"]),
                bool(data["read_receipts"]), int(data.get("photo_media_id") or 0),
                str(data.get("last_seen") or "everyone"),
                str(data.get("profile") or "everyone"),
                str(data.get("groups_add") or "everyone"))


def device_to_wire(device: Device) -> list[Any]:
    return [device.user_id, device.device_id, device.name, device.created_at]


def device_from_wire(data: Any) -> Device:
    user_id, device_id, name, created_at = data
    return Device(user_id, device_id, name, created_at, b"")






class HomeApi:
    """The home's answers to peers: `home.*` requests and posts (bodies are maps)."""

    def __init__(self, *, accounts: AccountService, cursors_of: Callable[[int], dict[int, int]],
                 hint_cursor: Callable[[int, int, int], None]) -> None:
        self._accounts = accounts
        self._cursors_of = cursors_of
        self._hint_cursor = hint_cursor
        self.requests: dict[str, Callable[[dict[str, Any]], Any]] = {
            "home.register": self._register, "home.login": self._login,
            "home.authenticate": self._authenticate, "home.devices": self._devices,
            "home.revoke_device": self._revoke_device, "home.user": self._user,
            "home.find_handle": self._find_handle, "home.users_exist": self._users_exist,
            "home.read_settings": self._read_settings,
            "home.update_profile": self._update_profile, "home.cursors": self._cursors,
        }
        self.posts: dict[str, Callable[[dict[str, Any]], None]] = {
            "home.last_seen": self._last_seen, "home.cursor_hints": self._cursor_hints,
        }

    async def _register(self, body: dict[str, Any]) -> Any:
        # Shielded: once started it finishes (the mesh cancels a handler at the
        # request's deadline), so state and answer never part.
        with trio.CancelScope(shield=True):
            user = await self._accounts.register(
                handle=_str(body, "handle"), password=_str(body, "password"),
                display_name=_str(body, "display_name"), client=_str(body, "client"))
        return user_to_wire(user)

    async def _login(self, body: dict[str, Any]) -> Any:
        with trio.CancelScope(shield=True):  # as _register
            result = await self._accounts.login(
                handle=_str(body, "handle"), password=_str(body, "password"),
                device_name=_str(body, "device_name"), client=_str(body, "client"))
        return {"token": result.token, "user": user_to_wire(result.user),
                "device": device_to_wire(result.device), "expires_at": result.expires_at}

    def _authenticate(self, body: dict[str, Any]) -> Any:
        session = self._accounts.authenticate(_str(body, "token"))
        return [session.user_id, session.device_id, session.token_hash, session.expires_at]

    def _session(self, body: dict[str, Any]) -> Session:
        # Only the user id matters to the calls below; the peer authenticated the token.
        return Session(_int(body, "user_id"), 0, b"", 0)

    def _devices(self, body: dict[str, Any]) -> Any:
        return [device_to_wire(device)
                for device in self._accounts.list_devices(self._session(body))]

    async def _revoke_device(self, body: dict[str, Any]) -> Any:
        await self._accounts.revoke_device(self._session(body), _int(body, "device_id"))
        return None

    def _user(self, body: dict[str, Any]) -> Any:
        return user_to_wire(self._accounts.get_user(_int(body, "user_id")))

    def _find_handle(self, body: dict[str, Any]) -> Any:
        return user_to_wire(self._accounts.find_by_handle(_str(body, "handle")))

    def _users_exist(self, body: dict[str, Any]) -> Any:
        self._accounts.require_users_exist(_ids(body, "user_ids"))
        return None

    def _read_settings(self, body: dict[str, Any]) -> Any:
        return [[user, self._accounts.shares_read_receipts(user)]
                for user in _ids(body, "user_ids")]

    async def _update_profile(self, body: dict[str, Any]) -> Any:
        user = await self._accounts.update_profile(
            self._session(body), display_name=_optional(body, "display_name", str),
            status_text=_optional(body, "status_text", str),
            hide_last_seen=_optional(body, "hide_last_seen", bool),
            read_receipts=_optional(body, "read_receipts", bool),
            photo_media_id=_optional(body, "photo_media_id", int),
            last_seen=_optional(body, "last_seen", str),
            profile=_optional(body, "profile", str),
            groups_add=_optional(body, "groups_add", str))
        return user_to_wire(user)

    def _cursors(self, body: dict[str, Any]) -> Any:
        return [[conversation, seq]
                for conversation, seq in self._cursors_of(_int(body, "device_id")).items()]

    def _last_seen(self, body: dict[str, Any]) -> None:
        self._accounts.record_last_seen(_int(body, "user_id"), _int(body, "ts"))

    def _cursor_hints(self, body: dict[str, Any]) -> None:
        hints = body.get("hints")
        if not isinstance(hints, list):
            raise BadRequest("hints: expected a list")
        for hint in hints:
            if isinstance(hint, list) and len(hint) == 3 and all(
                    isinstance(part, int) and not isinstance(part, bool) for part in hint):
                self._hint_cursor(*hint)


async def cursors_from_home(router: Router, device_id: int, user_id: int,
                            local: Callable[[int], dict[int, int]]) -> dict[int, int]:
    """A device's cursors, from its home (here or a peer); {} when the home cannot be
    reached (the device is then sent what was written after it came to be)."""
    home = router.home_of_user(user_id)
    if router.is_local(home):
        return local(device_id)
    peers = router.peers
    if peers is None or not peers.is_up(home):
        return {}
    try:
        rows = await peers.start_request(home, "home.cursors", {"device_id": device_id}).wait()
    except ChatdError:
        return {}
    return {conversation: seq for conversation, seq in rows}

