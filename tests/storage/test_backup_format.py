from __future__ import annotations

import io
import json
import tarfile
from typing import Any

import pytest

from chatd.storage.backup_format import (
    FORMAT,
    TAR_END,
    BackupInvalid,
    FileEntry,
    Manifest,
    Summary,
    check_member_name,
    tar_header,
    tar_padding,
)

DIGEST = "ab" * 32


def manifest(**changes: Any) -> Manifest:
    values: dict[str, Any] = {
        "chatd_version": "0.1.0", "created_at_ms": 1_796_000_000_123, "shard": "b",
        "ring_signature": "abc123", "shards": ("a", "b", "c"), "rocksdb_sequence": 42,
        "summary": Summary(2, 17, DIGEST),
        "files": (FileEntry("db/CURRENT", 16, DIGEST), FileEntry("media/x/y.jpg", 3, DIGEST))}
    values.update(changes)
    return Manifest(**values)


def test_a_manifest_round_trips_and_says_when_it_was_taken() -> None:
    original = manifest()
    data = original.to_json()
    assert Manifest.from_json(data) == original
    document = json.loads(data)
    assert document["format"] == FORMAT
    assert document["created_at"] == "2026-11-30T00:53:20.123Z"
    assert document["ring"] == {"signature": "abc123", "shards": ["a", "b", "c"]}


def edited(**changes: Any) -> bytes:
    document = json.loads(manifest().to_json())
    for dotted, value in changes.items():
        *parents, name = dotted.split("__")
        target = document
        for parent in parents:
            target = target[int(parent)] if parent.isdigit() else target[parent]
        if value is ...:
            del target[name]
        else:
            target[name] = value
    return json.dumps(document).encode()


@pytest.mark.parametrize(("data", "complaint"), [
    (b"{not json", "not JSON"),
    (b"[]", "must be an object"),
    (edited(format="chatd-backup/2"), "cannot read that backup"),
    (edited(shard=...), "shard is missing"),
    (edited(created_at_ms=-1), "negative"),
    (edited(created_at_ms=True), "created_at_ms is missing or not a int"),
    (edited(ring__shards=["a", 1]), "list of names"),
    (edited(summary__heads_sha256="x"), "heads_sha256 is not a sha256"),
    (edited(files__0__size=-3), "negative"),
    (edited(files__0__sha256="AB" * 32), "lower-case hex"),
    (edited(files__1__path="db/../../etc/passwd"), "not a backup member name"),
    (edited(files__1__path="db/CURRENT"), "listed twice"),
    (edited(files="db/CURRENT"), "files is missing or not a list"),
])
def test_a_bad_manifest_is_refused_naming_the_field(data: bytes, complaint: str) -> None:
    with pytest.raises(BackupInvalid, match=complaint):
        Manifest.from_json(data)


@pytest.mark.parametrize("name", [
    "db/000009.sst", "db/CURRENT", "db/MANIFEST-000005", "db/rocksdict-config.json",
    "media/a", "media/2026/11/photo one.jpg"])
def test_member_names_of_a_checkpoint_and_of_media_are_accepted(name: str) -> None:
    assert str(check_member_name(name)) == name


@pytest.mark.parametrize("name", [
    "CURRENT", "db", "db/", "db/sub/000009.sst", "/db/CURRENT", "db/../CURRENT",
    "media/../../x", "media/./x", "media//x", "media/a\\b", "media/a\0b", "other/x",
    "db/.hidden"])
def test_names_that_climb_out_or_are_not_chatds_are_refused(name: str) -> None:
    with pytest.raises(BackupInvalid):
        check_member_name(name)


def test_headers_and_padding_make_a_tar_that_tarfile_reads() -> None:
    long_name = "media/" + "d/" * 80 + "file.bin"  # past ustar's 100 characters
    stream = io.BytesIO()
    for name, data in [("db/CURRENT", b"MANIFEST-000005\n"), (long_name, b"x" * 513)]:
        stream.write(tar_header(name, len(data), 1_796_000_000) + data + tar_padding(len(data)))
    stream.write(TAR_END)
    stream.seek(0)
    with tarfile.open(fileobj=stream, mode="r|") as archive:
        read = []
        for member in archive:
            source = archive.extractfile(member)
            assert source is not None
            read.append((member.name, source.read()))
    assert read == [("db/CURRENT", b"MANIFEST-000005\n"), (long_name, b"x" * 513)]
