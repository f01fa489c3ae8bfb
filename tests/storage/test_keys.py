from __future__ import annotations

from chatd.storage import keys


def test_byte_order_is_numeric_order() -> None:
    pairs = [(1, 2), (1, 10), (1, 256), (2, 1), (2**40, 0), (2**63 - 1, 2**64 - 1)]
    encoded = [keys.message_key(conv, seq) for conv, seq in pairs]
    assert encoded == sorted(encoded)
    assert all(len(key) == 16 for key in encoded)


def test_dedup_keys_separate_conversations_and_senders() -> None:
    assert keys.dedup_key(1, 2, "a") != keys.dedup_key(1, 3, "a")
    assert keys.dedup_key(1, 2, "a").startswith(keys.pair(1, 2))
