"""The home's side of reports and abuse detection: counters, limits and reports of the
users homed on this shard (docs/privacy.md, "Reports and abuse detection").

Everything about one user is decided at their home, like their account: the signals
about them land here (`note`), their score is computed here from the rule in
domain/abuse.py, the reports against them are kept here (their id is minted here, so it
names this shard), and the limit flag is read here when they open a conversation. These
records are keyed by user, not conversation, so they are not replicated
(docs/architecture.md, "What lives where").

Other shards reach this through `home.*` mesh requests (the wire forms at the end);
services/abuse_signals.py and services/reports.py are the callers' side.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from chatd.config import AbuseConfig
from chatd.domain import abuse
from chatd.domain.abuse import AbuseRecord, Score, Signal
from chatd.domain.ids import SnowflakeGenerator
from chatd.domain.reports import Report, check_action, status_code
from chatd.errors import BadRequest, Conflict, NotFound
from chatd.pending import Pending
from chatd.services.accounts import AccountService
from chatd.services.clock import Clock
from chatd.services.commands import Commands
from chatd.services.peer_bodies import int_field
from chatd.services.peer_bodies import text_field as _text
from chatd.services.routing import Router
from chatd.storage import Batch, Store, records

log = logging.getLogger(__name__)

#: Most reports or queue entries one page (and one mesh answer) carries.
MAX_PAGE = 200
#: About the most bytes of reports one page carries (a mesh frame holds 1 MiB).
REPORT_PAGE_BYTES = 256 * 1024
#: Reports one `reports_filed` call looks at (there is no index by reporter).
FILED_SCAN = 20_000
#: Records one erasure batch deletes at most.
ERASE_STEP = 1024


@dataclass(frozen=True, slots=True)
class AccountState:
    """One account as the admin queue shows it."""

    user_id: int
    handle: str
    record: AbuseRecord
    score: Score
    #: Requests opened within the window now (the record may hold older ones).
    requests_in_window: int


@dataclass(frozen=True, slots=True)
class Limitation:
    """Why an account may only reply (what the 403 tells its owner)."""

    limited_by: str
    reason: str


class AbuseHome:
    def __init__(self, *, store: Store, commands: Commands, accounts: AccountService,
                 ids: SnowflakeGenerator, clock: Clock, config: AbuseConfig) -> None:
        self._store = store
        self._commands = commands
        self._accounts = accounts
        self._ids = ids
        self._clock = clock
        self._config = config
        # Changed by commands whose batch has not landed yet: the next command of the
        # same batch must see them (two signals in one batch both count).
        self._pending: dict[int, AbuseRecord] = {}
        self._pending_reports: dict[int, Report] = {}
        self._pending_dedup: dict[tuple[int, int, int, int], int] = {}
        self.requests: dict[str, Callable[[dict[str, Any]], Any]] = {
            "home.report": self._file_report_wire, "home.reports": self._reports_wire,
            "home.report_resolve": self._resolve_wire, "home.abuse_queue": self._queue_wire,
            "home.abuse_limit": self._limit_wire, "home.abuse_unlimit": self._unlimit_wire,
            "home.abuse_state": self._state_wire,
            "home.reports_filed": self._reports_filed_wire,
            "home.reports_strip_filed": self._strip_filed_wire,
            "home.abuse_erase": self._erase_user_wire,
        }
        self.posts: dict[str, Callable[[dict[str, Any]], None]] = {
            "home.abuse_signal": self._signal_wire,
        }

    def forget_pending(self) -> None:
        """After a failed batch write: pending changes never reached the disk."""
        self._pending.clear()
        self._pending_reports.clear()
        self._pending_dedup.clear()

    # -- signals ------------------------------------------------------------------------------

    def note(self, user_id: int, signal: Signal, *, reporter_id: int = 0) -> Pending[None]:
        """Count a signal about a user homed here (queued, in order with other commands);
        past the limit score the account is limited in the same batch."""
        if signal not in abuse.SIGNALS:
            raise BadRequest(f"signal: must be one of {', '.join(abuse.SIGNALS)}")

        def apply(batch: Batch) -> None:
            now = self._clock.now_ms()
            record = abuse.note_signal(self._record(user_id), signal, now, self._config,
                                       reporter_id=reporter_id)
            self._write(batch, record, now, evaluate=True)

        self._accounts.get_user(user_id)  # 404 for a user who is not (or no longer) here
        return self._commands.enqueue(apply)

    def limitation(self, user_id: int) -> Limitation | None:
        record = self._record(user_id)
        return Limitation(record.limited_by, record.limit_reason) if record.limited else None

    # -- reports ------------------------------------------------------------------------------

    async def file_report(self, draft: Report) -> tuple[Report, bool]:
        """Keep a report against a user homed here (`draft` without id and time), and
        count it; the same reporter reporting the same message (or, without one, the same
        user in the same conversation) again gets the first report back, `False`."""
        self._accounts.get_user(draft.reported_id)
        key = (draft.reported_id, draft.reporter_id, draft.conversation_id, draft.seq)

        def apply(batch: Batch) -> tuple[Report, bool]:
            known = self._pending_dedup.get(key) or self._store.get(records.REPORT_DEDUP, key)
            if known is not None:
                existing = self._report(known)
                if existing is not None:
                    return existing, False
            now = self._clock.now_ms()
            report = dataclasses.replace(draft, report_id=self._ids.next_id(),
                                         created_at=now, status="open")
            self._put_report(batch, report)
            batch.put(records.REPORT_DEDUP, key, report.report_id)
            self._pending_dedup[key] = report.report_id
            batch.after_commit.append(partial(self._settle_dedup, key, report.report_id))
            if abuse.report_scores(report.seq):
                record = abuse.note_signal(self._record(report.reported_id), "reported",
                                           now, self._config, reporter_id=report.reporter_id)
                self._write(batch, record, now, evaluate=True)
            return report, True

        return await self._commands.submit(apply)

    def list_reports(self, status: str, after: int, limit: int) -> tuple[list[Report], bool]:
        """Reports of one status in id order (oldest first) after `after`; and whether
        there are more."""
        limit = max(1, min(limit, MAX_PAGE))
        code = status_code(status)
        rows = self._store.scan(records.REPORTS, records.u64(code),
                                after=records.pair(code, after) if after else None,
                                limit=limit + 1)
        found = [report for _, report in rows[:limit]]
        # A page crosses the mesh: it must fit a frame, and reports carry up to 64 KiB of
        # evidence and as much of the message each. Cut short (one at least), the list
        # pages on from the last one given.
        size = 0
        for kept, report in enumerate(found):
            size += len(report.evidence) * 4 + len(report.message_text) * 4 \
                + len(report.note) * 4 + 512
            if size > REPORT_PAGE_BYTES and kept:
                return found[:kept], True
        return found, len(rows) > limit

    async def resolve(self, report_id: int, action: str, note: str) -> Report:
        check_action(action, note)

        def apply(batch: Batch) -> Report:
            report = self._report(report_id)
            if report is None:
                raise NotFound(f"no report with id {report_id}", code="unknown_report")
            if report.status != "open":
                raise Conflict(f"report {report_id} was resolved already ({report.action})",
                               code="already_resolved")
            now = self._clock.now_ms()
            resolved = dataclasses.replace(report, status="resolved", resolved_at=now,
                                           action=action, resolution_note=note)
            batch.delete(records.REPORTS, (status_code("open"), report_id))
            self._put_report(batch, resolved)
            record = self._record(report.reported_id)
            if action == "dismiss" and abuse.report_scores(report.seq):
                record = abuse.drop_report(record, report.reporter_id, report.created_at)
            elif action == "limit":
                record = abuse.limited_by_admin(
                    record, now, note or f"report {report_id} ({report.reason}) upheld")
            elif action == "unlimit":
                record = abuse.cleared(record, now, note)
            self._write(batch, record, now, evaluate=False)
            return resolved

        return await self._commands.submit(apply)

    # -- the admin queue and limits -------------------------------------------------------------

    def queue(self, after: int, limit: int) -> tuple[list[AccountState], bool]:
        """Accounts limited or scoring for review, in user id order after `after`."""
        limit = max(1, min(limit, MAX_PAGE))
        rows = self._store.scan(records.ABUSE_QUEUE, b"",
                                after=records.u64(after) if after else None, limit=limit + 1)
        states = []
        for user_id, _ in rows[:limit]:
            try:
                states.append(self.account(user_id))
            except NotFound:
                continue  # erased meanwhile: nothing left to review
        return states, len(rows) > limit

    def account(self, user_id: int) -> AccountState:
        user = self._accounts.get_user(user_id)
        record = self._record(user_id)
        now = self._clock.now_ms()
        return AccountState(user_id, user.handle, record,
                            self._score(record, user.created_at),
                            len(abuse.recent_requests(record, now, self._config)))

    async def limit(self, user_id: int, note: str) -> AccountState:
        return await self._admin_change(user_id, note, limit=True)

    async def unlimit(self, user_id: int, note: str) -> AccountState:
        """Lift the limit; the counters start afresh, so only new signals count."""
        return await self._admin_change(user_id, note, limit=False)

    async def _admin_change(self, user_id: int, note: str, *, limit: bool) -> AccountState:
        check_action("limit", note)
        self._accounts.get_user(user_id)

        def apply(batch: Batch) -> None:
            now = self._clock.now_ms()
            record = self._record(user_id)
            record = (abuse.limited_by_admin(record, now, note) if limit
                      else abuse.cleared(record, now, note))
            self._write(batch, record, now, evaluate=False)

        await self._commands.submit(apply)
        return self.account(user_id)

    # -- export and erasure (services/gdpr.py) ----------------------------------------------

    def reports_filed(self, reporter_id: int, after: tuple[int, int] | None
                      ) -> tuple[list[Report], tuple[int, int] | None]:
        """Reports kept here that `reporter_id` filed (against users homed here), from
        the key after `after`; and the key to go on after (None: the end). Reports are
        kept by the reported user, so there is no index by reporter: one call scans at
        most FILED_SCAN reports and answers at most about REPORT_PAGE_BYTES, and the
        caller pages on."""
        found: list[Report] = []
        size = scanned = 0
        cursor = records.pair(*after) if after is not None else None
        while scanned < FILED_SCAN:
            rows = self._store.scan(records.REPORTS, b"", after=cursor, limit=1000)
            if not rows:
                return found, None
            for key, report in rows:
                scanned += 1
                cursor = records.pair(*key)
                if report.reporter_id == reporter_id:
                    found.append(report)
                    size += (len(report.evidence) + len(report.message_text)
                             + len(report.note)) * 4 + 512
                    if size > REPORT_PAGE_BYTES:
                        return found, key
        return found, records.read_pair(cursor) if cursor else None

    async def strip_filed(self, reporter_id: int) -> int:
        """The words of a reporter being erased leave the reports they filed here: the
        note and the evidence are emptied. The report stays for the moderators (the
        reason, the reported message's server copy, the reported user's score), its
        reporter an id whose profile reads "deleted account". Returns how many changed."""
        changed = 0
        after: tuple[int, int] | None = None
        while True:
            found, after = self.reports_filed(reporter_id, after)
            stripped = [dataclasses.replace(report, note="", evidence="")
                        for report in found if report.note or report.evidence]
            if stripped:
                def apply(batch: Batch, stripped: list[Report] = stripped) -> None:
                    for report in stripped:
                        # As it is now (a moderator may have resolved it meanwhile).
                        current = self._report(report.report_id)
                        if current is not None:
                            self._put_report(batch, dataclasses.replace(
                                current, note="", evidence=""))
                    # An overwrite is not a delete: the purge (storage/purge.py) must
                    # compact the old versions, with their words, off the disk too.
                    keys = {records.pair(status_code(report.status), report.report_id)
                            for report in stripped}
                    batch.after_commit.append(
                        lambda: self._store.want_purge({records.REPORTS.name: keys}))

                await self._commands.submit(apply)
                changed += len(stripped)
            if after is None:
                return changed

    async def erase_user(self, user_id: int) -> int:
        """Everything kept here about a user homed here who is being erased: their
        counters and limit, their row in the admin queue, the reports against them (which
        hold copies of their messages' text) and those reports' dedup rows. The account
        cannot act any more, so there is nothing left to moderate. Returns how many
        reports went; idempotent."""
        removed = 0
        while True:
            against: list[tuple[int, int]] = []
            cursor: bytes | None = None
            while len(against) < ERASE_STEP:
                rows = self._store.scan(records.REPORTS, b"", after=cursor, limit=1000)
                if not rows:
                    break
                against.extend(key for key, report in rows if report.reported_id == user_id)
                cursor = records.pair(*rows[-1][0])
            against = against[:ERASE_STEP]
            dedup = [key for key, _ in self._store.scan(
                records.REPORT_DEDUP, records.u64(user_id), limit=ERASE_STEP)]

            def apply(batch: Batch, against: list[tuple[int, int]] = against,
                      dedup: list[tuple[int, int, int, int]] = dedup) -> None:
                for key in against:
                    batch.delete(records.REPORTS, key)
                    self._pending_reports.pop(key[1], None)
                for dedup_key in dedup:
                    batch.delete(records.REPORT_DEDUP, dedup_key)
                    self._pending_dedup.pop(dedup_key, None)
                batch.delete(records.ABUSE, user_id)
                batch.delete(records.ABUSE_QUEUE, user_id)
                self._pending.pop(user_id, None)

            await self._commands.submit(apply)
            removed += len(against)
            if len(against) < ERASE_STEP and len(dedup) < ERASE_STEP:
                return removed

    # -- records ----------------------------------------------------------------------------

    def _record(self, user_id: int) -> AbuseRecord:
        return (self._pending.get(user_id) or self._store.get(records.ABUSE, user_id)
                or AbuseRecord(user_id))

    def _report(self, report_id: int) -> Report | None:
        return (self._pending_reports.get(report_id)
                or self._store.get(records.REPORTS, (status_code("open"), report_id))
                or self._store.get(records.REPORTS, (status_code("resolved"), report_id)))

    def _put_report(self, batch: Batch, report: Report) -> None:
        batch.put(records.REPORTS, (status_code(report.status), report.report_id), report)
        self._pending_reports[report.report_id] = report
        batch.after_commit.append(partial(self._settle_report, report))

    def _score(self, record: AbuseRecord, created_at: int) -> Score:
        return abuse.score(record, created_at=created_at, now=self._clock.now_ms(),
                           rules=self._config)

    def _write(self, batch: Batch, record: AbuseRecord, now: int, *, evaluate: bool) -> None:
        """Store the record, limiting the account first if `evaluate` and its score says
        so, and keep the queue's index in step."""
        result = self._score(record, self._accounts.get_user(record.user_id).created_at)
        if evaluate:
            limited = abuse.after_signal(record, result, now, self._config)
            if limited is not record:
                log.info("user %d limited by the abuse score (%d): %s", record.user_id,
                         result.points, limited.limit_reason)
            record = limited
        batch.put(records.ABUSE, record.user_id, record)
        if abuse.in_queue(record, result, self._config):
            batch.put(records.ABUSE_QUEUE, record.user_id, None)
        else:
            batch.delete(records.ABUSE_QUEUE, record.user_id)
        self._pending[record.user_id] = record
        batch.after_commit.append(partial(self._settle, record))

    def _settle(self, record: AbuseRecord) -> None:
        if self._pending.get(record.user_id) is record:
            del self._pending[record.user_id]

    def _settle_dedup(self, key: tuple[int, int, int, int], report_id: int) -> None:
        if self._pending_dedup.get(key) == report_id:
            del self._pending_dedup[key]

    def _settle_report(self, report: Report) -> None:
        if self._pending_reports.get(report.report_id) is report:
            del self._pending_reports[report.report_id]

    # -- the wire (home.* requests from other shards) -----------------------------------------

    async def _file_report_wire(self, body: dict[str, Any]) -> Any:
        report, created = await self.file_report(report_from_wire(body["report"]))
        return [report_to_wire(report), created]

    def _reports_wire(self, body: dict[str, Any]) -> Any:
        found, more = self.list_reports(_text(body, "status"), _int(body, "after"),
                                        _int(body, "limit"))
        return {"reports": [report_to_wire(report) for report in found], "more": more}

    async def _resolve_wire(self, body: dict[str, Any]) -> Any:
        return report_to_wire(await self.resolve(_int(body, "report_id"),
                                                 _text(body, "action"), _text(body, "note")))

    def _queue_wire(self, body: dict[str, Any]) -> Any:
        states, more = self.queue(_int(body, "after"), _int(body, "limit"))
        return {"accounts": [state_to_wire(state) for state in states], "more": more}

    async def _limit_wire(self, body: dict[str, Any]) -> Any:
        return state_to_wire(await self.limit(_int(body, "user_id"), _text(body, "note")))

    async def _unlimit_wire(self, body: dict[str, Any]) -> Any:
        return state_to_wire(await self.unlimit(_int(body, "user_id"), _text(body, "note")))

    def _reports_filed_wire(self, body: dict[str, Any]) -> Any:
        after = body.get("after")
        if after is not None and not (isinstance(after, list) and len(after) == 2 and all(
                isinstance(part, int) and not isinstance(part, bool) and part >= 0
                for part in after)):
            raise BadRequest("after: expected [status, report_id] or nil")
        found, next_after = self.reports_filed(
            _int(body, "user_id"), (after[0], after[1]) if after is not None else None)
        return {"reports": [report_to_wire(report) for report in found],
                "after": list(next_after) if next_after is not None else None}

    async def _strip_filed_wire(self, body: dict[str, Any]) -> Any:
        return await self.strip_filed(_int(body, "user_id"))

    async def _erase_user_wire(self, body: dict[str, Any]) -> Any:
        return await self.erase_user(_int(body, "user_id"))

    def _state_wire(self, body: dict[str, Any]) -> Any:
        limitation = self.limitation(_int(body, "user_id"))
        return None if limitation is None else [limitation.limited_by, limitation.reason]

    def _signal_wire(self, body: dict[str, Any]) -> None:
        signal = _text(body, "signal")
        if signal not in abuse.SIGNALS:
            raise BadRequest(f"signal: unknown signal {signal!r}")
        self.note(_int(body, "user_id"), signal,
                  reporter_id=_int(body, "reporter_id"))


# -- wire forms -------------------------------------------------------------------------------

_REPORT_FIELDS = tuple(field.name for field in dataclasses.fields(Report))


def report_to_wire(report: Report) -> dict[str, Any]:
    return {name: getattr(report, name) for name in _REPORT_FIELDS}


def report_from_wire(data: Any) -> Report:
    if not isinstance(data, dict):
        raise BadRequest("report: expected a map")
    values: dict[str, Any] = {}
    for field in dataclasses.fields(Report):
        value = data.get(field.name, field.default)
        if value is dataclasses.MISSING:
            raise BadRequest(f"report: {field.name} is missing")
        kind = int if field.type in ("int", int) else str
        if not isinstance(value, kind) or isinstance(value, bool):
            raise BadRequest(f"report: {field.name} has the wrong type")
        values[field.name] = value
    return Report(**values)


def state_to_wire(state: AccountState) -> dict[str, Any]:
    record = state.record
    return {"user_id": state.user_id, "handle": state.handle, "points": state.score.points,
            "reasons": list(state.score.reasons), "opened": list(record.opened),
            "requests_in_window": state.requests_in_window,
            "accepted": record.accepted, "declined": record.declined,
            "blocked": record.blocked, "reporters": [[k, v] for k, v in
                                                     record.reporters.items()],
            "limited_at": record.limited_at, "limited_by": record.limited_by,
            "limit_reason": record.limit_reason, "cleared_at": record.cleared_at,
            "note": record.note}


def state_from_wire(data: Any) -> AccountState:
    record = AbuseRecord(
        data["user_id"], tuple(data["opened"]), data["accepted"], data["declined"],
        data["blocked"], {int(k): int(v) for k, v in data["reporters"]},
        data["limited_at"], data["limited_by"], data["limit_reason"], data["cleared_at"],
        data["note"])
    return AccountState(data["user_id"], data["handle"], record,
                        Score(data["points"], tuple(data["reasons"])),
                        data["requests_in_window"])


def _int(body: dict[str, Any], name: str) -> int:
    return int_field(body, name, minimum=0)



async def ask_home(router: Router, shard: str, method: str, body: dict[str, Any]) -> Any:
    """A `home.*` request to `shard`; 503 home_unreachable when it does not answer."""
    return await router.ask_peer(shard, method, body, what="home")
