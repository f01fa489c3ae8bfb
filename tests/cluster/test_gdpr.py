"""Export and erase across real shard processes: a user homed on a whose groups are owned
by b and c. An export made through c holds the messages of conversations other shards
own and the report kept at another home; an erasure asked through b leaves tombstones
and a `member_erased` entry on every owner, frees the handle at its home, kills the
tokens on every shard, and after /admin/compact on each shard no file under any data
directory holds the user's marker."""

from __future__ import annotations

import io
import json
import time
import uuid
import zipfile
from pathlib import Path

import httpx
import trio

from chatd.client import ApiError, ChatClient
from chatd.domain.rules import DELETED_CONTENT_TYPE
from tests.cluster.harness import (
    ADMIN_TOKEN,
    NAMES,
    Cluster,
    group_owned_by,
    history,
    home_of_user,
)
from tests.helpers import PASSWORD
from tests.services.test_gdpr import files_holding

AS_ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def test_export_and_erase_across_shards(cluster: Cluster) -> None:
    marker = f"mk{uuid.uuid4().hex[:16]}"
    alice = await cluster.person(home="a")
    bob = await cluster.person(home="b")
    carol = await cluster.person(home="c")
    as_alice = await cluster.client("a", alice)
    as_bob = await cluster.client("b", bob)
    as_carol = await cluster.client("c", carol)
    await as_alice.request("PATCH", "/me", {"display_name": f"Alice {marker}"})
    on_b = await group_owned_by(as_alice, "b", [bob.user_id, carol.user_id])
    on_c = await group_owned_by(as_alice, "c", [bob.user_id, carol.user_id])
    await as_alice.send(on_b, f"on b {marker}")
    await as_alice.send(on_c, f"on c {marker}")
    bobs = (await as_bob.send(on_c, "bob's spam"))["seq"]
    # A report alice files through a is kept at bob's home, b.
    await as_alice.request("POST", "/reports", {
        "conversation_id": on_c, "seq": bobs, "reason": "other",
        "note": f"note {marker}", "evidence": f"evidence {marker}"})
    await as_alice.request("POST", f"/blocks/{carol.user_id}")

    # The export, asked through c (where it is made and kept).
    async with httpx.AsyncClient(base_url=cluster["c"].url, timeout=30,
                                 headers={"Authorization": f"Bearer {alice.token}"}) as via_c:
        began = time.monotonic()
        started = await via_c.post("/me/export")
        assert started.status_code == 202, started.text
        export_id = started.json()["export_id"]
        with trio.fail_after(30):
            path = f"/me/export/{export_id}"
            while (zipped := await via_c.get(path)).status_code == 202:  # noqa: ASYNC110
                await trio.sleep(0.05)  # polled, as a client must
        print(f"the export took {time.monotonic() - began:.2f} s")
        assert zipped.status_code == 200, zipped.text
    archive = zipfile.ZipFile(io.BytesIO(zipped.content))
    sent = {(m["conversation_id"], m["body"]) for m in
            json.loads(archive.read("messages.json"))}
    assert sent == {(on_b, f"on b {marker}"), (on_c, f"on c {marker}")}
    # (With the groups made on the way to one owned by b and one by c.)
    assert {c["conversation_id"] for c in json.loads(archive.read("conversations.json"))} \
        >= {on_b, on_c}
    [report] = json.loads(archive.read("reports.json"))
    assert (report["reported_user_id"], report["evidence"]) == (bob.user_id,
                                                               f"evidence {marker}")
    assert [b["user_id"] for b in json.loads(archive.read("blocks.json"))] == [carol.user_id]

    # The scan can fail: before the erasure some shard's files hold the marker.
    roots = {name: Path(cluster[name].data_dir) for name in NAMES}
    assert any(files_holding(root, marker.encode())[1] for root in roots.values())

    # Erased through b: her home is a, her conversations' owners b and c.
    async with httpx.AsyncClient(base_url=cluster["b"].url, timeout=60) as via_b:
        erased = await via_b.request("DELETE", "/me", json={"password": PASSWORD,
                                                             "erase": True},
                                     headers={"Authorization": f"Bearer {alice.token}"})
    assert erased.status_code == 200 and erased.json() == {"status": "erased"}, erased.text

    for group, reader in ((on_b, as_bob), (on_c, as_carol)):
        entries = await history(reader, group)
        hers = [m for m in entries if m["sender_id"] == alice.user_id
                and m["content_type"] != "chatd/system"]
        assert hers and all(m["content_type"] == DELETED_CONTENT_TYPE and m["body"] == ""
                            for m in hers), hers
        assert entries[-1]["body"]["event"] == "member_erased", entries[-1]
        assert not any(marker in json.dumps(m) for m in entries)
    # Her token is dead on every shard.
    for name in NAMES:
        client = ChatClient(cluster[name].url, token=alice.token)
        async with client:
            try:
                await client.request("GET", "/me")
                raise AssertionError(f"the erased user's token still works on {name}")
            except ApiError as exc:
                assert (exc.status, exc.code) == (401, "invalid_token")

    # Every shard compacted: no file under any data directory holds her marker.
    async with httpx.AsyncClient(timeout=60, headers=AS_ADMIN) as operator:
        for name in NAMES:
            compacted = await operator.post(f"{cluster[name].url}/admin/compact")
            assert compacted.status_code == 204, compacted.text
    for name, root in roots.items():
        scanned, hits = files_holding(root, marker.encode())
        print(f"scan of {name}: {scanned} files, {len(hits)} holding the marker {hits}")
        assert hits == [] and scanned > 0

    # Her handle is free at its home: registered again (through c), homed at a anew.
    newcomer = await (await cluster.client("c")).register(alice.handle, PASSWORD, "New")
    assert newcomer["user_id"] != alice.user_id and home_of_user(newcomer["user_id"]) == "a"
