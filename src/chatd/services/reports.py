"""Reports from the reporter's side, and the admin's view of reports and accounts across
every shard.

A report is checked where the reporter is connected: the conversation's owner says
whether the reporter is a member (404 otherwise, as everywhere) and, for a message, that
they can read it and who sent it. Then it goes to the reported user's home
(services/abuse.py), which keeps it and counts it. The admin's lists ask every shard at
once, as `ConversationsOf` does, and merge the pages by id; a shard that cannot be
reached is named in the answer rather than failing it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import trio

from chatd.config import AbuseConfig
from chatd.domain import rules
from chatd.domain.models import Conversation, HistoryPage, Session
from chatd.domain.reports import STATUSES, Report, check_action, check_evidence, check_reason
from chatd.errors import BadRequest, ChatdError, NotFound
from chatd.protocol import owner as ops
from chatd.services.abuse import (
    MAX_PAGE,
    AbuseHome,
    AccountState,
    ask_home,
    report_from_wire,
    report_to_wire,
    state_from_wire,
)
from chatd.services.owner_api import PAGE_BYTES
from chatd.services.routing import Router

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Listing(Generic[T]):
    items: list[T]
    #: Whether another page follows (after the last item's id).
    more: bool
    #: Shards that did not answer: their items are missing from this page.
    unreachable: list[str]


@dataclass(frozen=True, slots=True)
class ReportInput:
    conversation_id: int
    seq: int | None
    user_id: int | None
    reason: str
    note: str
    evidence: str


class ReportService:
    def __init__(self, *, router: Router, home: AbuseHome, config: AbuseConfig) -> None:
        self._router = router
        self._home = home
        self._config = config
        #: Reports are rate limited per account and address: RateLimits.take (the
        #: `reports` bucket), set by the wiring; it raises 429 past the limit.
        self.rate_limit: Callable[..., object] | None = None

    async def report(self, session: Session, given: ReportInput, *,
                     address: str = "") -> tuple[Report, bool]:
        """File a report; (the report, whether it is new: a repeat gets the first).
        `address`: the client's, for the rate limit."""
        if self.rate_limit is not None:
            self.rate_limit("reports", account=session.user_id, address=address)
        check_reason(given.reason, given.note)
        check_evidence(given.evidence, self._config.max_evidence_bytes)
        if given.seq is None and given.user_id is None:
            raise BadRequest("name a message (seq) or a member (user_id) to report",
                             code="missing_field")
        if given.seq is not None and given.seq < 1:
            raise BadRequest("seq: must be at least 1", code="invalid_field")
        # Membership first: a non-member learns nothing, not even whether it exists.
        conv: Conversation = await self._router.ask(
            ops.View(given.conversation_id, session.user_id))
        message_id, content_type, text = 0, "", ""
        if given.seq is not None:
            message = await self._readable(session, given.conversation_id, given.seq)
            reported = message.sender_id
            if given.user_id is not None and given.user_id != reported:
                raise BadRequest("user_id: that user did not send the message reported",
                                 code="not_the_sender")
            message_id, content_type = message.message_id, message.content_type
            if rules.is_text_content(content_type) and isinstance(message.body, str):
                text = message.body
        else:
            assert given.user_id is not None
            if given.user_id not in conv.members:
                raise BadRequest("user_id: not a member of that conversation (report a "
                                 "message of theirs, by seq, instead)", code="not_a_member")
            reported = given.user_id
        if reported == session.user_id:
            raise BadRequest("you cannot report yourself", code="cannot_report_yourself")
        draft = Report(0, reported, session.user_id, given.conversation_id, given.seq or 0,
                       given.reason, given.note, given.evidence, 0, message_id,
                       content_type, text)
        home = self._router.home_of_user(reported)
        if self._router.is_local(home):
            return await self._home.file_report(draft)
        answer = await ask_home(self._router, home, "home.report",
                                {"report": report_to_wire(draft)})
        return report_from_wire(answer[0]), bool(answer[1])

    async def _readable(self, session: Session, conversation_id: int, seq: int) -> Any:
        """The message at `seq`, if the reporter can read it (joined before it, at or
        below the head); 404 otherwise, as for history."""
        max_bytes = 0 if self._router.owns(conversation_id) else PAGE_BYTES
        page: HistoryPage = await self._router.ask(
            ops.History(conversation_id, session.user_id, seq - 1, -1, 1, max_bytes))
        if not page.messages or page.messages[0].seq != seq:
            raise NotFound(f"no message {seq} that you can read in that conversation",
                           code="unknown_message")
        return page.messages[0]

    # -- the admin's side ------------------------------------------------------------------

    async def list_reports(self, status: str, after: int, limit: int) -> Listing[Report]:
        if status not in STATUSES:
            raise BadRequest(f"status: must be one of {', '.join(STATUSES)}",
                             code="invalid_field")
        return await self._everywhere(
            "home.reports", {"status": status, "after": after, "limit": limit},
            lambda: self._home.list_reports(status, after, limit),
            "reports", report_from_wire, lambda report: report.report_id, limit)

    async def resolve(self, report_id: int, action: str, note: str) -> Report:
        check_action(action, note)
        home = self._router.home_of_user(report_id)  # minted there: it names its shard
        if self._router.is_local(home):
            return await self._home.resolve(report_id, action, note)
        return report_from_wire(await ask_home(self._router, home, "home.report_resolve", {
            "report_id": report_id, "action": action, "note": note}))

    async def queue(self, after: int, limit: int) -> Listing[AccountState]:
        return await self._everywhere(
            "home.abuse_queue", {"after": after, "limit": limit},
            lambda: self._home.queue(after, limit), "accounts", state_from_wire,
            lambda state: state.user_id, limit)

    async def limit(self, user_id: int, note: str, *, limited: bool) -> AccountState:
        check_action("limit", note)
        home = self._router.home_of_user(user_id)
        if self._router.is_local(home):
            change = self._home.limit if limited else self._home.unlimit
            return await change(user_id, note)
        method = "home.abuse_limit" if limited else "home.abuse_unlimit"
        return state_from_wire(await ask_home(self._router, home, method,
                                              {"user_id": user_id, "note": note}))

    async def _everywhere(self, method: str, body: dict[str, Any],
                          local: Callable[[], tuple[list[T], bool]], field: str,
                          decode: Callable[[Any], T], key: Callable[[T], int],
                          limit: int) -> Listing[T]:
        """One page from every shard, merged by id: each shard's first `limit` items after
        `after` hold the first `limit` of all of them."""
        found: list[T] = []
        more = False
        unreachable: list[str] = []
        # The last id given by a shard that has more: past it, its items are missing.
        cut: int | None = None

        async def ask(shard: str) -> None:
            nonlocal more, cut
            if self._router.is_local(shard):
                items, shard_more = local()
            else:
                try:
                    answer = await ask_home(self._router, shard, method, body)
                    items = [decode(item) for item in answer[field]]
                    shard_more = bool(answer["more"])
                except (ChatdError, KeyError, TypeError, ValueError):
                    unreachable.append(shard)
                    return
            found.extend(items)
            more = more or shard_more
            if shard_more and items:
                last = key(items[-1])
                cut = last if cut is None else min(cut, last)

        async with trio.open_nursery() as nursery:
            for shard in self._router.shards:
                nursery.start_soon(ask, shard)
        found.sort(key=key)
        if cut is not None:
            # (A shard may cut its page short of `limit`: its answer must fit a frame.)
            found = [item for item in found if key(item) <= cut]
        limit = max(1, min(limit, MAX_PAGE))
        if len(found) > limit:
            more = True
            found = found[:limit]
        return Listing(found, more, sorted(unreachable))

