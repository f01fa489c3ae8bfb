"""The abuse score (domain/abuse.py): each signal, young and old accounts, thresholds."""

from __future__ import annotations

import dataclasses

import pytest

from chatd.config import AbuseConfig
from chatd.domain import abuse
from chatd.domain.abuse import AbuseRecord

RULES = AbuseConfig()
HOUR = 3_600_000
DAY = 24 * HOUR
NOW = 1_000 * DAY
OLD = NOW - 365 * DAY  # created a year ago
YOUNG = NOW - 2 * DAY


def signals(*kinds: abuse.Signal, at: int = NOW, record: AbuseRecord | None = None,
            reporter_id: int = 0) -> AbuseRecord:
    record = record or AbuseRecord(1)
    for kind in kinds:
        record = abuse.note_signal(record, kind, at, RULES, reporter_id=reporter_id)
    return record


def points(record: AbuseRecord, created_at: int = OLD, now: int = NOW) -> int:
    return abuse.score(record, created_at=created_at, now=now, rules=RULES).points


def test_a_quiet_account_scores_nothing() -> None:
    result = abuse.score(AbuseRecord(1), created_at=YOUNG, now=NOW, rules=RULES)
    assert result == abuse.Score(0, ())


def test_requests_past_the_free_ones_score_one_each_and_three_for_a_young_account() -> None:
    ten = signals(*["request_opened"] * 10)
    assert points(ten) == points(ten, YOUNG) == 0  # the free ones
    thirty = signals(*["request_opened"] * 30)
    assert points(thirty) == 20
    assert points(thirty, YOUNG) == 60
    # Young means younger than young_account_days (7).
    assert points(thirty, NOW - 7 * DAY + 1) == 60
    assert points(thirty, NOW - 7 * DAY) == 20
    reasons = abuse.score(thirty, created_at=YOUNG, now=NOW, rules=RULES).reasons
    assert reasons == ("opened 30 message requests in 24 h, 20 past the 10 free "
                       "(a new account, x3): 60",)


def test_only_requests_within_the_window_count() -> None:
    old = signals(*["request_opened"] * 30, at=NOW - 25 * HOUR)
    assert points(old, YOUNG) == 0
    # And they are dropped from the record when the next one comes.
    assert abuse.note_signal(old, "request_opened", NOW, RULES).opened == (NOW,)
    half = signals(*["request_opened"] * 15, at=NOW - 23 * HOUR)
    both = signals(*["request_opened"] * 15, record=half)
    assert points(both) == 20


def test_the_record_keeps_a_bounded_number_of_request_times() -> None:
    record = signals(*["request_opened"] * (abuse.MAX_OPENED_KEPT + 5))
    assert len(record.opened) == abuse.MAX_OPENED_KEPT


def test_declines_and_blocks_count_only_past_the_minimum_answered() -> None:
    nine_bad = signals(*["request_declined"] * 5, *["request_blocked"] * 4)
    assert points(nine_bad) == 0  # 9 answered < min_answered (10)
    ten = signals("request_accepted", record=nine_bad)
    assert points(ten) == 54  # 60 x 9/10
    half = signals(*["request_declined"] * 5, *["request_accepted"] * 5)
    assert points(half) == 30
    all_accepted = signals(*["request_accepted"] * 40)
    assert points(all_accepted) == 0
    assert abuse.score(ten, created_at=OLD, now=NOW, rules=RULES).reasons == (
        "9 of 10 answered requests declined or blocked (4 blocked): 54",)


def test_reports_count_per_distinct_reporter() -> None:
    once = signals("reported", reporter_id=7)
    assert points(once) == 15
    same_person_again = signals("reported", "reported", record=once, reporter_id=7)
    assert points(same_person_again) == 15
    two_people = signals("reported", record=same_person_again, reporter_id=8)
    assert points(two_people) == 30
    # Dismissing one of 7's three reports leaves 7 counted; all three, not.
    dropped = abuse.drop_report(two_people, 7, NOW)
    assert points(dropped) == 30
    for _ in range(2):
        dropped = abuse.drop_report(dropped, 7, NOW)
    assert points(dropped) == 15 and dropped.reporters == {8: 1}


def test_the_terms_add_up() -> None:
    record = signals(*["request_opened"] * 15)  # 5 extra: 15 for a young account
    record = signals(*["request_declined"] * 5, *["request_accepted"] * 5, record=record)
    record = signals("reported", record=record, reporter_id=9)
    assert points(record, YOUNG) == 15 + 30 + 15
    assert len(abuse.score(record, created_at=YOUNG, now=NOW, rules=RULES).reasons) == 3


@pytest.mark.parametrize(("score", "queued", "limited"), [
    (0, False, False), (24, False, False), (25, True, False), (49, True, False),
    (50, True, True), (80, True, True)])
def test_review_and_limit_thresholds(score: int, queued: bool, limited: bool) -> None:
    record = AbuseRecord(1)
    result = abuse.Score(score, ("why",))
    after = abuse.after_signal(record, result, NOW, RULES)
    assert after.limited is limited
    assert abuse.in_queue(after, result, RULES) is queued
    if limited:
        assert (after.limited_at, after.limited_by, after.limit_reason) == (NOW, "score", "why")


def test_a_limit_stays_until_cleared_and_clearing_starts_afresh() -> None:
    record = signals(*["request_opened"] * 30)
    result = abuse.score(record, created_at=YOUNG, now=NOW, rules=RULES)
    limited = abuse.after_signal(record, result, NOW, RULES)
    assert limited.limited
    # A lower score later does not lift it.
    assert abuse.after_signal(limited, abuse.Score(0, ()), NOW + DAY, RULES) is limited
    assert abuse.in_queue(limited, abuse.Score(0, ()), RULES)
    clear = abuse.cleared(limited, NOW + 1, "talked to them")
    assert not clear.limited and clear.opened == () and clear.cleared_at == NOW + 1
    assert points(clear, YOUNG, NOW + 1) == 0
    # A report filed before the clearing, dismissed after it, changes nothing.
    reported = dataclasses.replace(clear, reporters={5: 1})
    assert abuse.drop_report(reported, 5, NOW) is reported


def test_an_admin_limit_keeps_the_first_time_and_says_who() -> None:
    record = abuse.limited_by_admin(AbuseRecord(1), NOW, "spam wave")
    assert (record.limited_at, record.limited_by, record.limit_reason) == (
        NOW, "admin", "spam wave")
    again = abuse.limited_by_admin(record, NOW + 5, "")
    assert again.limited_at == NOW and again.limit_reason == "limited by a moderator"


def test_an_unknown_signal_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown abuse signal"):
        abuse.note_signal(AbuseRecord(1), "waved", NOW, RULES)  # type: ignore[arg-type]
