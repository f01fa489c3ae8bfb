"""How long does an online backup stall the event loop?

`python -m bench.backup [--mb 10 100 300]` fills a fresh chatd store with that many MB of
1 KB messages (unsynced batches of 1,000, as a busy shard leaves them: the newest still in
memtables), then, inside a Trio run with a task that ticks every millisecond:

- `Backups.start()`: the background flush (waited for with sleeps), the checkpoint, the
  media links and the facts read back (in a thread);
- reading the whole tar stream, as a client would;
- for comparison, on a second store filled alike, a checkpoint with no flush first.

It prints how long each took and the longest gap between two ticks: how long the loop
(every client of the shard) was stalled. docs/operations.md has the figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from chatd.domain.models import Message
from chatd.domain.ring import HashRing
from chatd.storage import Batch, Store, claim_ring, records
from chatd.storage.backup import Backups, BackupStream
from chatd.storage.snapshot import MediaFolder


def fill(store: Store, megabytes: int) -> None:
    # Incompressible, as ciphertext is: RocksDB compresses its blocks.
    body = os.urandom(500).hex()
    ring = HashRing(["bench"])
    claim_ring(store, ring.signature(), "bench", shards=ring.shards)
    rows = megabytes * 1000
    for start in range(0, rows, 1000):
        batch = Batch()
        for seq in range(start + 1, start + 1001):
            conversation_id = 1 + seq % 100
            batch.put(records.MESSAGES, (conversation_id, seq),
                      Message(seq, conversation_id, seq, 1, 1, f"c{seq}", "text/plain", body,
                              seq))
        store.write(batch)


async def timed(step: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    """(seconds the step took, the longest gap between ticks meanwhile, in seconds)."""
    gaps: list[float] = []
    done = trio.Event()

    async def tick() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await trio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    async with trio.open_nursery() as nursery:
        nursery.start_soon(tick)
        await trio.sleep(0.02)
        began = time.perf_counter()
        await step()
        took = time.perf_counter() - began
        done.set()
    return took, max(gaps)


async def measure(megabytes: int, directory: Path) -> None:
    store = Store.open(str(directory / "data"), sync=False)
    plain = Store.open(str(directory / "plain"), sync=False)
    try:
        fill(store, megabytes)
        fill(plain, megabytes)
        backups = Backups(store=store, workspace=directory / "data" / "backup-tmp",
                          media=MediaFolder(directory / "data" / "media"),
                          chatd_version="bench", now_ms=lambda: time.time_ns() // 1_000_000)
        streams: list[BackupStream] = []
        sizes: list[int] = []

        async def start() -> None:
            streams.append(await backups.start())

        async def read_stream() -> None:
            total = 0
            async for chunk in streams[0]:
                total += len(chunk)
            await streams[0].aclose()
            sizes.append(total)

        async def checkpoint_only() -> None:
            plain.checkpoint(str(directory / "plain-checkpoint"))

        start_s, start_gap = await timed(start)
        stream_s, stream_gap = await timed(read_stream)
        plain_s, plain_gap = await timed(checkpoint_only)
        size_mb = sizes[0] / 1e6
        print(f"{megabytes:>5} MB written | start: {start_s * 1000:7.1f} ms, loop stalled "
              f"{start_gap * 1000:6.1f} ms | stream {size_mb:7.1f} MB: {stream_s:6.2f} s, "
              f"stalled {stream_gap * 1000:5.1f} ms | checkpoint without the flush first: "
              f"{plain_s * 1000:7.1f} ms, stalled {plain_gap * 1000:6.1f} ms")
    finally:
        store.close()
        plain.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.backup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, nargs="+", default=[10, 100, 300],
                        help="sizes to measure, in MB of messages written")
    args = parser.parse_args()
    for megabytes in args.mb:
        directory = Path(tempfile.mkdtemp(prefix="chatd-bench-backup-"))
        try:
            trio.run(measure, megabytes, directory)
        finally:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
