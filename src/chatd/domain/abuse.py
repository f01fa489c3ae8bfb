"""Abuse detection, pure: a user's counters, the score they make, and when it limits them.

The counters live on the user's home (services/abuse.py), fed by signals about the user:

    request_opened     they opened a message request (to someone not in their contacts)
    request_accepted   a recipient accepted one of their requests
    request_declined   a recipient declined one
    request_blocked    a recipient blocked them from a request
    reported           someone reported them (POST /reports)

The score (docs/privacy.md, "Reports and abuse detection", states the same rule):

    requests = max(0, opened in the last request_window_hours - free_requests)
               x (young_request_weight if the account is younger than
                  young_account_days, else 1)
    answers  = answer_points x (declined + blocked) / answered,
               only once answered = accepted + declined + blocked >= min_answered
    reports  = report_points x distinct reporters whose reports are not dismissed
               (only reports that name a message the user sent: report_scores)
    score    = floor(requests + answers + reports)

At `review_score` the account shows in the admin queue; at `limit_score` it is limited
(it may only reply in conversations it already has) until an admin lifts the limit.
Lifting it starts the counters afresh, so only signals after that can limit it again.
Reporters count once each, so one person filing many reports weighs as one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, Protocol

Signal = Literal["request_opened", "request_accepted", "request_declined", "request_blocked",
                 "reported"]
SIGNALS: tuple[Signal, ...] = ("request_opened", "request_accepted", "request_declined",
                               "request_blocked", "reported")
#: Opened-request times kept per user: past this many in one window the score is far
#: past any sane threshold, and the record stays small.
MAX_OPENED_KEPT = 1000
_HOUR_MS = 3_600_000
_DAY_MS = 86_400_000


class ScoringRules(Protocol):
    """The rule's constants (config.AbuseConfig, `[abuse]`, has them)."""

    @property
    def young_account_days(self) -> float: ...
    @property
    def request_window_hours(self) -> float: ...
    @property
    def free_requests(self) -> int: ...
    @property
    def young_request_weight(self) -> int: ...
    @property
    def min_answered(self) -> int: ...
    @property
    def answer_points(self) -> int: ...
    @property
    def report_points(self) -> int: ...
    @property
    def review_score(self) -> int: ...
    @property
    def limit_score(self) -> int: ...


@dataclass(frozen=True, slots=True)
class AbuseRecord:
    """What the home knows about one user's behaviour (records.ABUSE)."""

    user_id: int
    #: ms of the requests opened within the window (oldest first), at most MAX_OPENED_KEPT.
    opened: tuple[int, ...] = ()
    accepted: int = 0
    declined: int = 0
    blocked: int = 0
    #: reporter -> reports of theirs still counted (not dismissed).
    reporters: dict[int, int] = field(default_factory=dict)
    #: When the account was limited (0: it is not).
    limited_at: int = 0
    #: "score" (the rule limited it) or "admin".
    limited_by: str = ""
    #: Why, in words (the score's reasons, or the admin's note).
    limit_reason: str = ""
    #: When an admin last lifted a limit: the counters began again then.
    cleared_at: int = 0
    #: The admin's note on the last limit or unlimit.
    note: str = ""

    @property
    def limited(self) -> bool:
        return self.limited_at > 0


@dataclass(frozen=True, slots=True)
class Score:
    points: int
    #: One line per term that scored, for the admin queue and the limited user.
    reasons: tuple[str, ...]


def note_signal(record: AbuseRecord, signal: Signal, now: int, rules: ScoringRules, *,
                reporter_id: int = 0) -> AbuseRecord:
    """The record after one signal (times outside the window dropped)."""
    if signal == "request_opened":
        opened = (*_recent(record.opened, now, rules), now)[-MAX_OPENED_KEPT:]
        return dataclasses.replace(record, opened=opened)
    if signal == "request_accepted":
        return dataclasses.replace(record, accepted=record.accepted + 1)
    if signal == "request_declined":
        return dataclasses.replace(record, declined=record.declined + 1)
    if signal == "request_blocked":
        return dataclasses.replace(record, blocked=record.blocked + 1)
    if signal == "reported":
        reporters = dict(record.reporters)
        reporters[reporter_id] = reporters.get(reporter_id, 0) + 1
        return dataclasses.replace(record, reporters=reporters)
    raise ValueError(f"unknown abuse signal {signal!r}")


def report_scores(seq: int) -> bool:
    """Only a report naming a message the user sent counts toward their score. One that
    names only a member of a conversation is kept for the admins but scores nothing:
    otherwise a few throwaway accounts could add anyone to a group and report them
    there, and limit an account that never said a word to them."""
    return seq > 0


def drop_report(record: AbuseRecord, reporter_id: int, reported_at: int) -> AbuseRecord:
    """A report dismissed as unfounded stops counting (one filed before the counters
    were last cleared was not counted any more)."""
    if reported_at < record.cleared_at or reporter_id not in record.reporters:
        return record
    reporters = dict(record.reporters)
    reporters[reporter_id] -= 1
    if reporters[reporter_id] <= 0:
        del reporters[reporter_id]
    return dataclasses.replace(record, reporters=reporters)


def score(record: AbuseRecord, *, created_at: int, now: int, rules: ScoringRules) -> Score:
    """The rule of the module docstring, with its reasons."""
    points = 0.0
    reasons = []
    opened = len(_recent(record.opened, now, rules))
    extra = max(0, opened - rules.free_requests)
    if extra:
        young = now - created_at < rules.young_account_days * _DAY_MS
        weight = rules.young_request_weight if young else 1
        points += extra * weight
        age = f"a new account, x{weight}" if young else "x1"
        reasons.append(f"opened {opened} message requests in {rules.request_window_hours:g} h, "
                       f"{extra} past the {rules.free_requests} free ({age}): {extra * weight}")
    bad = record.declined + record.blocked
    answered = record.accepted + bad
    if answered >= rules.min_answered and bad:
        share = rules.answer_points * bad / answered
        points += share
        reasons.append(f"{bad} of {answered} answered requests declined or blocked "
                       f"({record.blocked} blocked): {share:.0f}")
    reporters = len(record.reporters)
    if reporters:
        points += reporters * rules.report_points
        reasons.append(f"reported by {reporters} "
                       f"{'person' if reporters == 1 else 'people'}: "
                       f"{reporters * rules.report_points}")
    return Score(int(points), tuple(reasons))


def after_signal(record: AbuseRecord, result: Score, now: int,
                 rules: ScoringRules) -> AbuseRecord:
    """Limit the account when its score reaches `limit_score` (a limit stays until an
    admin lifts it; it never lapses by itself)."""
    if record.limited or result.points < rules.limit_score:
        return record
    return dataclasses.replace(record, limited_at=now, limited_by="score",
                               limit_reason="; ".join(result.reasons))


def in_queue(record: AbuseRecord, result: Score, rules: ScoringRules) -> bool:
    """Whether the account belongs in the admin queue: limited, or scoring for review."""
    return record.limited or result.points >= rules.review_score


def limited_by_admin(record: AbuseRecord, now: int, note: str) -> AbuseRecord:
    return dataclasses.replace(record, limited_at=record.limited_at or now, limited_by="admin",
                               limit_reason=note or "limited by a moderator", note=note)


def cleared(record: AbuseRecord, now: int, note: str) -> AbuseRecord:
    """An admin lifted the limit: a clean slate, so only new signals count from now."""
    return AbuseRecord(record.user_id, cleared_at=now, note=note)


def recent_requests(record: AbuseRecord, now: int, rules: ScoringRules) -> tuple[int, ...]:
    """When the requests within the window were opened."""
    return _recent(record.opened, now, rules)


def _recent(opened: tuple[int, ...], now: int, rules: ScoringRules) -> tuple[int, ...]:
    since = now - rules.request_window_hours * _HOUR_MS
    return tuple(stamp for stamp in opened if stamp > since)
