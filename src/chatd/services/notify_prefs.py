"""Notification preferences, on the user's home: mute per conversation, and whether
notifications may show a preview of the message.

Both notifiers read these here, on the home, where they run: push (services/push/) and
email. So every question they ask is a dict lookup, never a mesh request. The client's
side (`PATCH /conversations/{id}/notifications`, `/me/notifications/previews`) goes to
the home with `Users.ask_home`.

Rows: `notify_mutes` (user, conversation) -> muted_until (ms); `notify_prefs` user ->
{"previews": bool}. Mute is per user, not per device: muting on the phone mutes the
laptop too (as in WhatsApp and Signal).

The rule both notifiers follow is `notifies()`: a muted conversation stays silent
unless the message mentions the user (a mention of them in a group still notifies).
Previews are off unless the user turns them on: a preview is message text leaving
the server for a third party's push service or a mailbox.

Its `home.*` requests are added to `HomeApi`'s (services/context.py):

    home.mute_set {user_id, conversation_id, muted_until} -> muted_until (0: not muted)
    home.mute_get {user_id, conversation_id} -> muted_until (0: not muted)
    home.notify_prefs {user_id} -> {"previews": bool}
    home.notify_prefs_set {user_id, previews} -> {"previews": bool}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chatd.services.clock import Clock
from chatd.services.commands import Commands
from chatd.services.peer_bodies import int_field as _id
from chatd.services.peer_bodies import optional_field as _optional
from chatd.services.users import Users
from chatd.storage import Batch, Store, records

#: Users whose mutes are kept in memory (cleared past this).
_CACHE = 50_000
#: What a user who never chose gets: no previews (privacy by default).
DEFAULT_PREVIEWS = False


class NotifyPrefs:
    def __init__(self, *, store: Store, commands: Commands, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._commands = commands
        self._mutes: dict[int, dict[int, int]] = {}
        self._prefs: dict[int, dict[str, Any]] = {}
        self.requests: dict[str, Callable[[dict[str, Any]], Any]] = {
            "home.mute_set": self._mute_set, "home.mute_get": self._mute_get,
            "home.notify_prefs": self._prefs_get, "home.notify_prefs_set": self._prefs_set,
        }

    def forget_pending(self) -> None:
        """After a failed batch write: read them again from disk."""
        self._mutes.clear()
        self._prefs.clear()

    # -- what the notifiers ask (on the home) --------------------------------------------------

    def mutes_of(self, user_id: int) -> dict[int, int]:
        """conversation -> muted until (ms), as stored (some may have passed)."""
        cached = self._mutes.get(user_id)
        if cached is None:
            cached = {conversation: until for (_, conversation), until in
                      self._store.scan(records.NOTIFY_MUTES, records.u64(user_id))}
            if len(self._mutes) >= _CACHE:
                self._mutes.clear()
            self._mutes[user_id] = cached
        return cached

    def muted_until(self, user_id: int, conversation_id: int, now_ms: int) -> int:
        """When the mute ends (ms), or 0 when the conversation is not muted now."""
        until = self.mutes_of(user_id).get(conversation_id, 0)
        return until if until > now_ms else 0

    def is_muted(self, user_id: int, conversation_id: int, now_ms: int) -> bool:
        return self.muted_until(user_id, conversation_id, now_ms) > 0

    def notifies(self, user_id: int, conversation_id: int, now_ms: int, *,
                 mentioned: bool = False) -> bool:
        """Whether a message in the conversation may notify the user: not muted, or it
        mentions them."""
        return mentioned or not self.is_muted(user_id, conversation_id, now_ms)

    def previews(self, user_id: int) -> bool:
        """Whether the user allows message text in notifications."""
        return bool(self._prefs_of(user_id).get("previews", DEFAULT_PREVIEWS))

    def _prefs_of(self, user_id: int) -> dict[str, Any]:
        cached = self._prefs.get(user_id)
        if cached is None:
            stored = self._store.get(records.NOTIFY_PREFS, user_id)
            cached = dict(stored) if isinstance(stored, dict) else {}
            if len(self._prefs) >= _CACHE:
                self._prefs.clear()
            self._prefs[user_id] = cached
        return cached

    # -- changes (on the home) -----------------------------------------------------------------

    async def set_mute(self, user_id: int, conversation_id: int, muted_until: int,
                       now_ms: int) -> int:
        """Mute until `muted_until` (ms); a time not in the future unmutes."""
        until = muted_until if muted_until > now_ms else 0

        def apply(batch: Batch) -> None:
            mutes = self.mutes_of(user_id)
            if until:
                batch.put(records.NOTIFY_MUTES, (user_id, conversation_id), until)
                mutes[conversation_id] = until
            elif conversation_id in mutes:
                batch.delete(records.NOTIFY_MUTES, (user_id, conversation_id))
                del mutes[conversation_id]

        await self._commands.submit(apply)
        return until

    async def set_previews(self, user_id: int, previews: bool) -> None:
        def apply(batch: Batch) -> None:
            prefs = self._prefs_of(user_id)
            prefs["previews"] = previews
            batch.put(records.NOTIFY_PREFS, user_id, dict(prefs))

        await self._commands.submit(apply)

    def erase_into(self, batch: Batch, user_id: int) -> None:
        """An erased account's mutes and settings go (services/gdpr.py)."""
        for conversation in list(self.mutes_of(user_id)):
            batch.delete(records.NOTIFY_MUTES, (user_id, conversation))
        batch.delete(records.NOTIFY_PREFS, user_id)
        self._mutes.pop(user_id, None)
        self._prefs.pop(user_id, None)

    async def erase(self, user_id: int) -> None:
        await self._commands.submit(lambda batch: self.erase_into(batch, user_id))

    def export(self, user_id: int, now_ms: int) -> dict[str, Any]:
        """What a data export lists (services/gdpr.py)."""
        return {"previews": self.previews(user_id),
                "muted": [{"conversation_id": str(conversation), "muted_until": until}
                          for conversation, until in sorted(self.mutes_of(user_id).items())
                          if until > now_ms]}

    # -- home.* requests -----------------------------------------------------------------------

    async def _mute_set(self, body: dict[str, Any]) -> int:
        return await self.set_mute(_id(body, "user_id"), _id(body, "conversation_id"),
                                   _id(body, "muted_until", minimum=0), self._clock.now_ms())

    def _mute_get(self, body: dict[str, Any]) -> int:
        return self.muted_until(_id(body, "user_id"), _id(body, "conversation_id"),
                                self._clock.now_ms())

    def _prefs_get(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"previews": self.previews(_id(body, "user_id"))}

    async def _prefs_set(self, body: dict[str, Any]) -> dict[str, Any]:
        user_id = _id(body, "user_id")
        previews = _optional(body, "previews", bool)
        if previews is not None:
            await self.set_previews(user_id, previews)
        return {"previews": self.previews(user_id)}


class NotifySettings:
    """The client's side, from any shard: each call goes to the user's home."""

    def __init__(self, *, users: Users, prefs: NotifyPrefs) -> None:
        self._users = users
        self._prefs = prefs

    async def set_mute(self, user_id: int, conversation_id: int, muted_until: int) -> int:
        body = {"user_id": user_id, "conversation_id": conversation_id,
                "muted_until": muted_until}
        until: int = await self._users.ask_home(user_id, "home.mute_set", body,
                                                self._prefs.requests["home.mute_set"])
        return until

    async def muted_until(self, user_id: int, conversation_id: int) -> int:
        until: int = await self._users.ask_home(
            user_id, "home.mute_get", {"user_id": user_id, "conversation_id": conversation_id},
            self._prefs.requests["home.mute_get"])
        return until

    async def previews(self, user_id: int, previews: bool | None = None) -> bool:
        """The user's preview setting, changed first when `previews` is given."""
        answer = await self._users.ask_home(
            user_id, "home.notify_prefs_set", {"user_id": user_id, "previews": previews},
            self._prefs.requests["home.notify_prefs_set"])
        return bool(answer["previews"])
