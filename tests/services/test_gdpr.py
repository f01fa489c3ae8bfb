"""The erasure proven by a scan of the disk (issue 13's "done when"): a user with a unique
marker in their handle, display name, status, message bodies (a direct chat and a
group), an uploaded file attached to a message, the note and evidence of a report they
filed and the server's copy of their text in a report against them is exported (the zip
holds the marker), compacted into table files, then erased, then the shard is compacted
again, and no file under the data directory holds the marker any more. The same scan
before the erasure finds it, so the scan can fail."""

from __future__ import annotations

import io
import uuid
import zipfile
from pathlib import Path

import httpx

from chatd.server import RunningServer
from tests.conftest import ServerFactory
from tests.helpers import PASSWORD, login, new_account
from tests.web.test_gdpr import ready_export
from tests.web.test_media import uploaded

ADMIN = "gdpr-admin-token-0123456789"
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}


def files_holding(root: Path, marker: bytes) -> tuple[int, list[str]]:
    """(files scanned, the files whose bytes hold `marker`), every file under `root`."""
    scanned, hits = 0, []
    for path in sorted(root.rglob("*")):
        if path.is_file():
            scanned += 1
            if marker in path.read_bytes():
                hits.append(str(path.relative_to(root)))
    return scanned, hits


async def test_after_erase_and_compaction_no_file_holds_the_marker(
        start_server: ServerFactory) -> None:
    running: RunningServer = await start_server(server={"admin_token": ADMIN})
    data = Path(running.services.config.storage.data_dir)
    marker = f"mk{uuid.uuid4().hex[:16]}"
    async with httpx.AsyncClient(base_url=running.url, timeout=30) as http:
        registered = await http.post("/register", json={
            "handle": f"u{marker}", "password": PASSWORD, "display_name": f"Name {marker}"})
        assert registered.status_code == 201, registered.text
        alice = await login(http, f"u{marker}")
        bob, carol = await new_account(http), await new_account(http)
        assert (await alice.patch("/me", json={"status": f"status {marker}"})).status_code == 200
        direct = await alice.direct_with(bob)
        group = await alice.group("plain group", bob, carol)
        await bob.send(direct, "hello alice")
        sent_direct = await alice.send(direct, f"direct {marker}")
        assert sent_direct.status_code == 201
        direct_seq = sent_direct.json()["seq"]
        assert (await alice.send(group, f"group {marker}")).status_code == 201
        media = await uploaded(alice, f"file body {marker}\n".encode() * 50, "text/plain",
                               f"{marker}.txt")
        sent = await alice.post("/messages/send", {
            "conversation_id": group, "client_msg_id": "with-file",
            "content_type": "text/plain", "body": "see attached",
            "attachments": [{"media_id": media["media_id"]}]})
        assert sent.status_code == 201, sent.text
        thanks = (await bob.send(group, "thanks")).json()["seq"]
        # A report alice filed: its note and evidence are her words. (A block has no
        # note: a `blocks` row holds only when it was made; she blocks carol anyway.)
        filed = await alice.post("/reports", {
            "conversation_id": group, "seq": thanks, "reason": "other",
            "note": f"note {marker}", "evidence": f"evidence {marker}"})
        assert filed.status_code == 201, filed.text
        assert (await alice.post(f"/blocks/{carol.user_id}")).status_code == 204
        # A report against her: the server copies her message's text into it.
        against = await bob.post("/reports", {"conversation_id": direct, "seq": direct_seq,
                                              "reason": "spam"})
        assert against.status_code == 201, against.text

        # The export holds the marker (in the files it made of the data).
        export_id = (await alice.post("/me/export")).json()["export_id"]
        zipped = await ready_export(alice, export_id)
        archive = zipfile.ZipFile(io.BytesIO(zipped.content))
        holding = {name for name in archive.namelist() if marker.encode() in archive.read(name)}
        assert {"profile.json", "messages.json", "media.json", "reports.json"} <= holding
        assert any(name.startswith("media/") for name in holding)

        # Into table files first (the purge flushes every memtable): an erasure must
        # take the marker out of SST files too, not only out of the WAL and memtables,
        # where an overwrite alone replaces it.
        assert (await http.post("/admin/compact", headers=AS_ADMIN)).status_code == 204
        # The scan can fail: before the erasure it finds the marker.
        scanned_before, before = files_holding(data, marker.encode())
        assert before, "the scan found nothing before the erasure: it proves nothing"

        erased = await alice.http.request("DELETE", "/me", headers=alice.headers,
                                          json={"password": PASSWORD, "erase": True})
        assert erased.status_code == 200 and erased.json() == {"status": "erased"}
        compacted = await http.post("/admin/compact", headers=AS_ADMIN)
        assert compacted.status_code == 204, compacted.text

        scanned_after, after = files_holding(data, marker.encode())
        print(f"scan: {scanned_before} files before erasure, {len(before)} holding the "
              f"marker ({before}); {scanned_after} files after erasure and compaction, "
              f"{len(after)} holding it ({after})")
        assert after == []
        assert scanned_after > 0

        # What the others keep: tombstones in place of her messages, member_erased.
        history = (await bob.get(f"/messages/{direct}")).json()["messages"]
        kinds = [(m["sender_id"] == alice.user_id, m["content_type"]) for m in history]
        assert (True, "chatd/deleted") in kinds
        assert any(m["content_type"] == "chatd/system" and m["body"].get("event") ==
                   "member_erased" for m in history), history
        assert not any(marker in str(m["body"]) for m in history)
