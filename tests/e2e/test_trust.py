"""Trust on first use, key-change warnings and safety numbers (sans-I/O)."""

from __future__ import annotations

from chatd.e2e.trust import DeviceKeys, TrustStore, fingerprint, safety_number

BOB1 = DeviceKeys("2", "21", "curve-a", "ed-a")
BOB1_SWAPPED = DeviceKeys("2", "21", "curve-evil", "ed-evil")
BOB2 = DeviceKeys("2", "22", "curve-b", "ed-b")


def test_first_use_is_trusted_silently_then_changes_are_reported() -> None:
    trust = TrustStore()
    assert trust.observe("2", [BOB1]) == []
    assert trust.trusted("2") == [BOB1]
    (added,) = trust.observe("2", [BOB1, BOB2])
    assert (added.kind, added.device_id, added.was_verified) == ("added", "22", False)
    (changed,) = trust.observe("2", [BOB1_SWAPPED, BOB2])
    assert (changed.kind, changed.old, changed.new) == ("changed", BOB1, BOB1_SWAPPED)
    assert "changed its security keys" in changed.describe()
    # Until accepted, the changed device is not encrypted to, and not reported twice.
    assert trust.trusted("2") == [BOB2]
    assert trust.observe("2", [BOB1_SWAPPED, BOB2]) == []
    trust.accept("2", "21")
    assert trust.trusted("2") == [BOB1_SWAPPED, BOB2]
    (removed,) = trust.observe("2", [BOB2])
    assert removed.kind == "removed"
    assert TrustStore.from_bytes(trust.to_bytes()).trusted("2") == [BOB2]


def test_a_verified_user_whose_keys_change_is_flagged() -> None:
    trust = TrustStore()
    trust.observe("2", [BOB1])
    trust.verify("2")
    assert trust.is_verified("2")
    (changed,) = trust.observe("2", [BOB1_SWAPPED])
    assert changed.was_verified and "compare safety numbers again" in changed.describe()
    trust.accept("2", "21")
    assert not trust.is_verified("2")


def test_safety_numbers_are_the_same_on_both_sides_and_change_with_the_keys() -> None:
    ours = safety_number("1", ["ed-alice"], "2", ["ed-b", "ed-a"])
    theirs = safety_number("2", ["ed-a", "ed-b"], "1", ["ed-alice"])
    assert ours == theirs
    groups = ours.split(" ")
    assert len(groups) == 12 and all(len(g) == 5 and g.isdigit() for g in groups)
    assert safety_number("1", ["ed-alice"], "2", ["ed-evil", "ed-b"]) != ours
    assert fingerprint("2", ["ed-a"]) != fingerprint("3", ["ed-a"])  # the id counts


def test_keys_under_two_devices_are_trusted_by_neither_and_reported_once() -> None:
    """Mallory republished Bob's device keys as hers (another home could not tell):
    neither device is encrypted to, both are reported once, and the lookup by (user,
    device) still answers each."""
    trust = TrustStore()
    copy = DeviceKeys("9", "91", BOB1.curve25519, BOB1.ed25519)
    assert trust.observe("9", [copy]) == []  # alone, nothing to compare with yet
    assert trust.trusted("9") == [copy]
    changes = trust.observe("2", [BOB1, BOB2])
    assert sorted((c.kind, c.user_id, c.device_id) for c in changes) == [
        ("duplicate", "2", "21"), ("duplicate", "9", "91")]
    assert all("neither is trusted" in c.describe() for c in changes)
    assert {(c.old, c.new) for c in changes} == {(copy, BOB1), (BOB1, copy)}
    assert trust.trusted("2") == [BOB2]
    assert trust.trusted("9") == []
    assert trust.is_duplicated(BOB1) and not trust.is_duplicated(BOB2)
    assert trust.device("2", "21") == BOB1 and trust.device("9", "91") == copy
    # Reported once, also after a restart.
    assert trust.observe("2", [BOB1, BOB2]) == []
    restored = TrustStore.from_bytes(trust.to_bytes())
    assert restored.observe("9", [copy]) == []
    assert restored.trusted("2") == [BOB2]
    # One key shared is enough (the ed25519 key alone here).
    half = DeviceKeys("8", "81", "curve-own", BOB2.ed25519)
    (flagged_half, flagged_bob2) = sorted(trust.observe("8", [half]),
                                          key=lambda c: c.user_id, reverse=True)
    assert (flagged_half.kind, flagged_half.user_id) == ("duplicate", "8")
    assert (flagged_bob2.kind, flagged_bob2.user_id) == ("duplicate", "2")
    assert trust.trusted("2") == [] and trust.trusted("8") == []
    # Once the copy is gone, the genuine device is trusted again.
    trust.observe("9", [])
    assert trust.trusted("2") == [BOB1]  # BOB2 still shares its key with "8"
    assert not trust.is_duplicated(BOB1)
