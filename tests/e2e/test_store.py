"""The encrypted state directory: records survive a reopen, a wrong passphrase fails
cleanly, nothing is in the clear on disk, and a damaged file is reported, not misread."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatd.e2e.errors import StateCorrupt, WrongPassphrase
from chatd.e2e.store import StateStore
from tests.e2e.crypto_helpers import CHEAP, open_store


def test_records_survive_a_reopen_and_are_not_in_the_clear(tmp_path: Path) -> None:
    store = open_store(tmp_path / "s")
    store.put("olm/secret-peer-name", b"secret value bytes")
    store.put("other", b"x")
    store.delete("other")
    again = open_store(tmp_path / "s")
    assert again.get("olm/secret-peer-name") == b"secret value bytes"
    assert again.names() == ["olm/secret-peer-name"]
    assert again.pickle_key == store.pickle_key and len(store.pickle_key) == 32
    for path in (tmp_path / "s").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"secret" not in data, path
            assert b"peer-name" not in path.name.encode()


def test_a_wrong_passphrase_fails_cleanly(tmp_path: Path) -> None:
    open_store(tmp_path / "s", "right one").put("account", b"a")
    with pytest.raises(WrongPassphrase):
        open_store(tmp_path / "s", "wrong one")
    with pytest.raises(WrongPassphrase):
        StateStore.open(tmp_path / "t", "", **CHEAP)
    assert open_store(tmp_path / "s", "right one").get("account") == b"a"


def test_a_damaged_record_or_header_is_reported(tmp_path: Path) -> None:
    open_store(tmp_path / "s").put("account", b"a")
    (record,) = (tmp_path / "s" / "records").iterdir()
    record.write_bytes(record.read_bytes()[:-1] + b"\x00")
    with pytest.raises(StateCorrupt):
        open_store(tmp_path / "s")
    (tmp_path / "s" / "state.json").write_text("{not json")
    with pytest.raises(StateCorrupt):
        open_store(tmp_path / "s")


def test_an_interrupted_write_leaves_the_old_record(tmp_path: Path) -> None:
    open_store(tmp_path / "s").put("account", b"old")
    (tmp_path / "s" / "records" / ".tmp-crashed").write_bytes(b"half a write")
    store = open_store(tmp_path / "s")
    assert store.get("account") == b"old"
    assert not (tmp_path / "s" / "records" / ".tmp-crashed").exists()
