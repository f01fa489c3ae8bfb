"""The round trip an operator relies on, with real processes: `chatd backup` of a shard
under load, `chatd restore` into a new directory, `chatd serve` on it, and every send
acknowledged before the backup began is there; nothing acknowledged after it ended is."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from chatd.client import ChatClient
from tests.helpers import PASSWORD, UNLIMITED_SENDS_ENV, ServerProcess, fresh_handle

pytestmark = pytest.mark.slow

ADMIN = "roundtrip-admin-token-0123456789"
SENDERS = 6


@dataclass(frozen=True)
class Ack:
    sender_id: str
    client_msg_id: str


async def chatd(*args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process([sys.executable, "-m", "chatd", *args],
                                  env={**os.environ, "CHATD_ADMIN_TOKEN": ADMIN},
                                  capture_stdout=True, capture_stderr=True, check=False)


async def account(url: str) -> ChatClient:
    client = ChatClient(url, timeout=30)
    handle = fresh_handle("rt")
    await client.register(handle, PASSWORD, handle.title())
    await client.login(handle, PASSWORD)
    return client


async def whole_log(client: ChatClient, conversation_id: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    while True:
        page = await client.history(conversation_id, after=len(messages), limit=200)
        messages.extend(page["messages"])
        if not page["has_more"]:
            return messages


async def test_a_backup_under_load_restores_every_acknowledged_send(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "media" / "ab").mkdir(parents=True)
    (data / "media" / "ab" / "photo.jpg").write_bytes(b"\xff\xd8 a photo")
    # Senders as fast as the server takes them: the load, not the rate limits, is tested.
    original = ServerProcess(data, tmp_path / "original.log",
                             extra_env={"CHATD_SERVER_ADMIN_TOKEN": ADMIN,
                                        **UNLIMITED_SENDS_ENV})
    restored_server: ServerProcess | None = None
    acked: dict[tuple[str, int], Ack] = {}
    try:
        url = await original.ready()
        reader = await account(url)
        senders = [await account(url) for _ in range(SENDERS)]
        member_ids = [sender.credentials.user_id for sender in senders if sender.credentials]
        group = (await reader.create_group("Backup under load", member_ids))["conversation_id"]
        directs = [(await sender.open_direct(reader.credentials.user_id))["conversation_id"]
                   for sender in senders if reader.credentials]
        stop = trio.Event()

        async def over_rest(sender: ChatClient, direct: str) -> None:
            assert sender.credentials is not None
            for n in range(100_000):
                if stop.is_set():
                    return
                conversation_id = group if n % 2 else direct
                client_msg_id = f"{sender.credentials.user_id}-rest-{n}"
                sent = await sender.send(conversation_id, client_msg_id,
                                         client_msg_id=client_msg_id)
                acked[conversation_id, sent["seq"]] = Ack(sender.credentials.user_id,
                                                          client_msg_id)

        async def over_websocket(sender: ChatClient, direct: str) -> None:
            assert sender.credentials is not None
            async with sender.connect() as live, trio.open_nursery() as nursery:
                nursery.start_soon(drain, live)
                for n in range(100_000):
                    if stop.is_set():
                        break
                    conversation_id = group if n % 2 else direct
                    client_msg_id = f"{sender.credentials.user_id}-ws-{n}"
                    sent = await live.send(conversation_id, client_msg_id,
                                           client_msg_id=client_msg_id)
                    acked[conversation_id, sent["seq"]] = Ack(sender.credentials.user_id,
                                                              client_msg_id)
                nursery.cancel_scope.cancel()

        async def drain(live: Any) -> None:
            async for _event in live.events():  # others' messages: not what is measured
                pass

        async with trio.open_nursery() as nursery:
            for index, (sender, direct) in enumerate(zip(senders, directs, strict=True)):
                nursery.start_soon(over_websocket if index % 2 else over_rest, sender, direct)
            with trio.fail_after(60):
                while len(acked) < 300:  # noqa: ASYNC110  # polls the senders' progress
                    await trio.sleep(0.01)
            # Every send acknowledged by now was durable before the request went out.
            before_backup = dict(acked)
            backup = await chatd("backup", str(tmp_path / "backup"), "--url", url)
            after_backup = dict(acked)
            with trio.fail_after(60):
                while len(acked) < len(after_backup) + 50:  # noqa: ASYNC110
                    await trio.sleep(0.01)
            stop.set()
        assert backup.returncode == 0, backup.stderr.decode()
        # The load went on while the backup was taken: the test covers an online backup.
        assert len(after_backup) > len(before_backup), "no send was acknowledged meanwhile"

        restore = await chatd("restore", str(tmp_path / "backup"), "--data",
                              str(tmp_path / "restored"))
        assert restore.returncode == 0, restore.stderr.decode()
        assert (tmp_path / "restored" / "media" / "ab" / "photo.jpg").read_bytes() == \
            b"\xff\xd8 a photo"

        restored_server = ServerProcess(tmp_path / "restored", tmp_path / "restored.log")
        restored_url = await restored_server.ready()
        # Accounts and tokens are data too: the reader's token works on the restored shard.
        on_restored = ChatClient(restored_url, token=reader.token, timeout=30)
        restored_logs = {conversation_id: await whole_log(on_restored, conversation_id)
                         for conversation_id in [group, *directs]}
        original_logs = {conversation_id: await whole_log(reader, conversation_id)
                         for conversation_id in [group, *directs]}
        await on_restored.aclose()
        for client in [reader, *senders]:
            await client.aclose()
    finally:
        if restored_server is not None:
            restored_server.terminate()
        original.terminate()

    for conversation_id, log in restored_logs.items():
        seqs = [message["seq"] for message in log]
        assert seqs == list(range(1, len(seqs) + 1)), "the restored log has a gap"
        # A point in time: the restored log is a prefix of the original's.
        assert log == original_logs[conversation_id][:len(log)]
    restored = {(conversation_id, message["seq"]): message
                for conversation_id, log in restored_logs.items() for message in log}
    for key, ack in before_backup.items():
        assert key in restored, f"acknowledged before the backup, missing after restore: {key}"
        assert (restored[key]["sender_id"], restored[key]["client_msg_id"]) == (
            ack.sender_id, ack.client_msg_id)
    for key in set(acked) - set(after_backup):
        assert key not in restored, f"acknowledged after the backup ended, yet restored: {key}"
    print(f"acknowledged before the backup: {len(before_backup)}; during it: "
          f"{len(after_backup) - len(before_backup)}; restored: {len(restored)}")
