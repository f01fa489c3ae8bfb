"""AbuseSignals and AbuseHome over a real store (no HTTP): signals counted at the home,
several in one batch, the adapters for the message-request flow, the limit and its
lifting, and reports' repeats."""

from __future__ import annotations

import inspect

import pytest
import trio
import trio.testing

from chatd.config import AbuseConfig, ConfigError
from chatd.domain.content_filter import UrlDomainBlocklist
from chatd.domain.reports import Report
from chatd.errors import BadRequest, Conflict, Forbidden, NotFound
from chatd.services.content_filters import load_content_filter
from chatd.services.peering import PeerHandler
from tests.services.conftest import Shard


async def landed() -> None:
    """Until every queued command has been written (the committer idles)."""
    await trio.testing.wait_all_tasks_blocked()


async def test_signals_count_at_the_home_and_past_the_limit_the_account_is_limited(
        shard: Shard) -> None:
    services = shard.services
    user = (await shard.user("spammer")).user_id
    # All queued before the committer runs: one batch, and each sees the ones before.
    for _ in range(27):
        services.abuse.request_opened(user, 999)
    await landed()
    state = services.abuse_home.account(user)
    assert (state.score.points, state.record.limited, state.requests_in_window) == (51, True, 27)
    assert state.record.limited_by == "score"
    limitation = await services.abuse.limitation(user)
    assert limitation is not None and "27 message requests" in limitation.reason
    with pytest.raises(Forbidden) as refused:
        await services.abuse.require_may_initiate(user)
    assert refused.value.code == "account_limited"

    lifted = await services.abuse_home.unlimit(user, "ok")
    assert not lifted.record.limited and lifted.score.points == 0
    await services.abuse.require_may_initiate(user)
    # The limit survives a restart (it is on disk, not only in memory).
    await services.abuse_home.limit(user, "again")
    services = await shard.reopen()
    assert (await services.abuse.limitation(user)) is not None


async def test_answers_to_requests_are_counted_by_outcome(shard: Shard) -> None:
    services = shard.services
    user = (await shard.user("asker")).user_id
    for outcome in ["accepted"] * 4 + ["declined"] * 3 + ["blocked"] * 3 + ["ignored"]:
        services.abuse.request_answered(user, 5, outcome)
    await landed()
    record = services.abuse_home.account(user).record
    assert (record.accepted, record.declined, record.blocked) == (4, 3, 3)
    assert services.abuse_home.account(user).score.points == 36  # 60 x 6/10
    assert not record.limited


async def test_a_signal_about_nobody_is_dropped(shard: Shard) -> None:
    shard.services.abuse.note(4242, "request_opened")  # no such user: no error, no record
    await landed()
    with pytest.raises(NotFound):
        shard.services.abuse_home.account(4242)
    with pytest.raises(ValueError, match="unknown abuse signal"):
        shard.services.abuse.note(4242, "waved")  # type: ignore[arg-type]


async def test_a_repeated_report_is_the_first_even_in_the_same_batch(shard: Shard) -> None:
    home = shard.services.abuse_home
    reporter, reported = (await shard.user()).user_id, (await shard.user()).user_id
    draft = Report(0, reported, reporter, 77, 3, "spam", "", "evidence", 0)
    answers: list[tuple[Report, bool]] = []

    async def file() -> None:
        answers.append(await home.file_report(draft))

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(file)
    assert sorted(created for _, created in answers) == [False, False, True]
    assert len({report.report_id for report, _ in answers}) == 1
    assert home.account(reported).record.reporters == {reporter: 1}
    report_id = answers[0][0].report_id
    await home.resolve(report_id, "uphold", "")
    with pytest.raises(Conflict):
        await home.resolve(report_id, "dismiss", "")
    assert home.list_reports("open", 0, 10) == ([], False)
    [resolved], more = home.list_reports("resolved", 0, 10)
    assert (resolved.action, more) == ("uphold", False)


def test_the_content_filter_is_chosen_by_config() -> None:
    assert load_content_filter(AbuseConfig()) is None
    blocklist = load_content_filter(AbuseConfig(blocked_domains=("a.example",)))
    assert isinstance(blocklist, UrlDomainBlocklist)
    named = load_content_filter(AbuseConfig(
        content_filter="chatd.domain.content_filter:UrlDomainBlocklist",
        blocked_domains=("b.example",)))
    assert named is not None and not named.check(1, 2, "text/plain", "b.example").allowed
    for bad in ("chatd.nowhere:Filter", "chatd.domain.content_filter:Nothing",
                "chatd.domain.content_filter:Verdict"):
        with pytest.raises(ConfigError, match=r"abuse\.content_filter"):
            load_content_filter(AbuseConfig(content_filter=bad))


async def test_a_peers_signal_post_counts_and_a_malformed_one_is_dropped(shard: Shard) -> None:
    services = shard.services
    peer = PeerHandler(coordinator=services.coordinator, owner_api=services.owner_api,
                       home_api=services.home_api, delivery=services.delivery)
    user = (await shard.user()).user_id
    peer.handle_post("b", "home.abuse_signal", {"user_id": user, "signal": "request_declined",
                                                "reporter_id": 0})
    for bad in ({"user_id": user, "signal": "waved", "reporter_id": 0},
                {"user_id": str(user), "signal": "request_declined", "reporter_id": 0},
                {"user_id": user, "signal": "request_declined"},
                ["not", "a", "map"]):
        peer.handle_post("b", "home.abuse_signal", bad)
    await landed()
    assert services.abuse_home.account(user).record.declined == 1
    # Requests that do not fit are refused, and file nothing.
    for method, body in (("home.report", {"report": {"reported_id": user}}),
                         ("home.report", {"report": "x"}),
                         ("home.reports", {"status": "open", "after": -1, "limit": 5}),
                         ("home.abuse_limit", {"user_id": user})):
        with pytest.raises(BadRequest):
            await _maybe_await(peer.handle_request("b", method, body))
    assert services.abuse_home.list_reports("open", 0, 10) == ([], False)
    assert not services.abuse_home.account(user).record.limited


async def _maybe_await(value: object) -> object:
    return await value if inspect.isawaitable(value) else value
