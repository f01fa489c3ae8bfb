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
