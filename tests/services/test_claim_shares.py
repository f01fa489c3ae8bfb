"""The per-claimer share of a device's one-time keys (services/claim_shares.py): its
memory is bounded without handing a claimer a fresh share."""

from __future__ import annotations

from typing import Any

import pytest

from chatd.config import KeysConfig
from chatd.services import claim_shares
from chatd.services.claim_shares import ClaimShares


def test_a_full_table_drops_the_least_recently_used_not_every_share(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(claim_shares, "_CACHE", 10)
    unused: Any = None
    shares = ClaimShares(directory=unused, store=unused, clock=unused, config=KeysConfig())
    now = 1_000_000
    shares._recent((1, 2, 3), now).append(now + 9)  # the claimer to keep, used last
    for n in range(9):  # one claimer spreading claims over many devices fills the table
        shares._recent((7, 100 + n, 1), now).append(now + n)
    shares._recent((7, 999, 1), now + 10)  # a new row when full: the table is trimmed
    assert len(shares._given) <= 10 // 2 + 1
    assert list(shares._given[(1, 2, 3)]) == [now + 9], "a recent share was forgotten"
