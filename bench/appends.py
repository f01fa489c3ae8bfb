"""`appends`: the durable append path alone, in this process, without the network.

What a shard's log can take: sends queued through `MessagingService.start_send` (the same
checks, seq assignment, dedup row and message row as a send from a socket), written by
the group committer into synced RocksDB batches, each send acknowledged once its batch
landed. It bounds every network scenario from above.
"""

from __future__ import annotations

import gc
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from bench.harness import Result
from bench.worker import process_cpu_seconds
from chatd.config import AuthConfig, Config, RateLimitsConfig, StorageConfig
from chatd.pending import Pending
from chatd.services.context import build_services
from chatd.storage import Store

PASSWORD = "bench password"


async def appends(*, messages: int, conversations: int, sync: bool = True) -> Result:
    with tempfile.TemporaryDirectory(prefix="chatd-appends-") as directory:
        config = Config(storage=StorageConfig(data_dir=str(Path(directory) / "data"), sync=sync),
                        auth=AuthConfig(argon2_opslimit=1, argon2_memlimit_kib=8),
                        # A measurement of appends, far beyond a person's rate.
                        ratelimits=RateLimitsConfig.unlimited())
        store = Store.open(config.storage.data_dir, sync=sync)
        try:
            services = build_services(config, store)
            async with trio.open_nursery() as nursery:
                await nursery.start(services.committer.run)
                figures = await _measure(services, messages, conversations)
                services.committer.close()
        finally:
            store.close()
    return Result("appends", {"messages": messages, "conversations": conversations,
                              "sync": sync}, figures)


async def _measure(services: Any, messages: int, conversations: int) -> dict[str, Any]:
    accounts, conv_service, messaging = (services.accounts, services.conversations,
                                         services.messaging)
    sessions = []
    for n in range(conversations + 1):
        handle = f"appender{n}"
        await accounts.register(handle=handle, password=PASSWORD, display_name=handle,
                                client="bench")
        login = await accounts.login(handle=handle, password=PASSWORD, device_name="bench",
                                     client="bench")
        sessions.append(accounts.authenticate(login.token))
    sender = sessions[0]
    targets = [(await conv_service.open_direct(sender, session.user_id)).conversation
               .conversation_id for session in sessions[1:]]
    # As `chatd serve` does once it is built: the long-lived heap leaves the collector's
    # full passes.
    gc.collect()
    gc.freeze()
    before = services.committer.statistics()
    cpu = process_cpu_seconds()
    began = time.perf_counter()
    refused: list[BaseException] = []

    def count_refusals(done: Pending[Any]) -> None:
        if done.error is not None:
            refused.append(done.error)

    # Answers are taken by callback, as the WebSocket path takes them: holding 100,000
    # pending sends in a list would make the measurement the collector's.
    last: Pending[Any] | None = None
    for n in range(messages):
        last = messaging.start_send(
            sender, conversation_id=targets[n % len(targets)], client_msg_id=f"a{n}",
            content_type="text/plain", body="x" * 100)
        last.add_done_callback(count_refusals)
        if n % 2000 == 1999:
            await trio.lowlevel.checkpoint()  # let the committer take what is queued
    # Batches land in queue order: once the last send is acknowledged, all of them are
    # (awaiting each one would measure Trio's scheduling, not the log).
    assert last is not None
    await last.wait_finished()
    elapsed = time.perf_counter() - began
    cpu = process_cpu_seconds() - cpu
    after = services.committer.statistics()
    batches = after.batches_written - before.batches_written
    return {"appends_per_s": messages / elapsed, "cpu_us_per_append": cpu / messages * 1e6,
            "batches": batches, "mean_batch": messages / batches if batches else 0.0,
            "seconds": elapsed, "lost": len(refused)}
