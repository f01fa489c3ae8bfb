from __future__ import annotations

from chatd.domain.models import RecentSenders


def test_recent_senders_answer_ranges_and_forget_the_oldest() -> None:
    recent = RecentSenders(covers_from=1, limit=4)
    for seq, sender in [(1, 10), (2, 20), (4, 10), (5, 30)]:  # seq 3: a system entry
        recent.add(seq, sender)
    assert recent.senders(2, 4) == {20, 10}
    assert recent.senders(3, 3) == set()
    assert recent.senders(5, 9) == {30}
    for seq in range(6, 10):
        recent.add(seq, 40)  # 8 entries: the oldest four are dropped, in one go
    assert recent.covers_from == 6
    assert recent.senders(6, 9) == {40}
