"""Abuse signals and the limit, from any shard: each goes to the user's home.

`AbuseSignals.note(user_id, signal)` counts a signal about a user at their home (a call
here, or a `home.abuse_signal` post: best effort, like presence — a signal lost with a
link is one request less in a score, never a wrong answer to anyone).
`require_may_initiate` is what ConversationService asks before a user starts something
new (a direct conversation, a group, new members): a limited account gets
`403 account_limited`, saying why and how to appeal.

The message-request flow (services of the privacy settings) calls `request_opened` and
`request_answered`; reports note `reported` at the home themselves (services/abuse.py).
"""

from __future__ import annotations

import contextlib
import logging

from chatd.config import AbuseConfig
from chatd.domain.abuse import SIGNALS, Signal
from chatd.errors import ChatdError, Forbidden
from chatd.services.abuse import AbuseHome, Limitation, ask_home
from chatd.services.routing import Router

log = logging.getLogger(__name__)

#: What a recipient's answer to a request is, as a signal about its sender.
_OUTCOMES: dict[str, Signal] = {"accepted": "request_accepted",
                                "declined": "request_declined",
                                "blocked": "request_blocked"}


class AbuseSignals:
    def __init__(self, *, router: Router, home: AbuseHome, config: AbuseConfig) -> None:
        self._router = router
        self._home = home
        self._config = config

    def note(self, user_id: int, signal: Signal, *, reporter_id: int = 0) -> None:
        """Count `signal` about `user_id` at their home; not awaited, never raises."""
        if signal not in SIGNALS:
            raise ValueError(f"unknown abuse signal {signal!r}")
        home = self._router.home_of_user(user_id)
        if self._router.is_local(home):
            # Unknown user, shutting down, overloaded: a signal is not worth an error.
            with contextlib.suppress(ChatdError):
                self._home.note(user_id, signal, reporter_id=reporter_id)
        elif self._router.peers is not None:
            self._router.peers.post(home, "home.abuse_signal", {
                "user_id": user_id, "signal": signal, "reporter_id": reporter_id})

    def request_opened(self, sender_id: int, recipient_id: int) -> None:
        """A message request from `sender_id` was opened (the privacy flow's listener)."""
        self.note(sender_id, "request_opened")

    def request_answered(self, sender_id: int, recipient_id: int, outcome: str) -> None:
        """`recipient_id` answered `sender_id`'s request: accepted, declined or blocked."""
        signal = _OUTCOMES.get(outcome)
        if signal is None:
            log.warning("request answered with an unknown outcome %r; not counted", outcome)
            return
        self.note(sender_id, signal)

    async def limitation(self, user_id: int) -> Limitation | None:
        """Whether the user is limited, and why (asked of their home)."""
        home = self._router.home_of_user(user_id)
        if self._router.is_local(home):
            return self._home.limitation(user_id)
        answer = await ask_home(self._router, home, "home.abuse_state", {"user_id": user_id})
        return None if answer is None else Limitation(str(answer[0]), str(answer[1]))

    def refusal(self, limitation: Limitation) -> Forbidden:
        """The 403 a limited account gets for starting something new."""
        why = ("a moderator limited it" if limitation.limited_by == "admin"
               else f"its activity looked like abuse ({limitation.reason})")
        return Forbidden(
            f"your account is limited to replying in conversations you already have, "
            f"because {why}; you cannot open new conversations, create groups or add "
            f"members. To appeal, {self._config.appeal}.", code="account_limited")

    async def require_may_initiate(self, user_id: int) -> None:
        limitation = await self.limitation(user_id)
        if limitation is not None:
            raise self.refusal(limitation)
