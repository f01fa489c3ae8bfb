"""The benchmark harness runs, small, so it never rots. Correctness only: no speed asserted."""

from __future__ import annotations

import pytest
from bench.live import run_live
from bench.serverproc import BenchServer

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("scenario", ["direct", "group"])
async def test_live_scenarios_lose_and_duplicate_nothing(scenario: str) -> None:
    server = BenchServer()
    try:
        result = await run_live(server, scenario=scenario,  # type: ignore[arg-type]
                                rate=20, seconds=1, pairs=2, members=5, senders=2)
    finally:
        server.stop()
    assert result.messages_sent > 0
    assert (result.lost, result.duplicated) == (0, 0)
    assert result.deliveries == result.messages_sent * (1 if scenario == "direct" else 4)
