"""How long deleted bytes take to leave the disk, and what the purge costs the loop.

`python -m bench.purge [--conversations N] [--per-conversation M]` writes N x M messages
(200-byte bodies) through `Store`, flushes, then deletes one message in 1, in 100 and in
5,000 of the conversations and times `Store.purge` of what each deletion owes (flush +
forced bottommost compaction of the deleted ranges + WAL and MANIFEST roll), run from a
thread while the main thread ticks every millisecond, as the event loop would: the
longest gap between ticks is what the purge stalls the loop. docs/privacy.md quotes the
figures ("Deleting messages").
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import threading
import time

from chatd.domain.models import Message
from chatd.storage import Batch, Store, records

BODY = "x" * 200


def _size_mb(root: str) -> float:
    return sum(os.path.getsize(os.path.join(folder, name))
               for folder, _, names in os.walk(root) for name in names) / 1e6


def _timed_purge(store: Store) -> tuple[float, float]:
    """(seconds the purge took, the longest gap of a 1 ms ticker beside it)."""
    ranges = store.take_purge()
    done = threading.Event()
    took: list[float] = []

    def purge() -> None:
        began = time.perf_counter()
        store.purge(ranges)
        took.append(time.perf_counter() - began)
        done.set()

    worker = threading.Thread(target=purge)
    worker.start()
    longest, last = 0.0, time.perf_counter()
    while not done.is_set():
        time.sleep(0.001)
        now = time.perf_counter()
        longest, last = max(longest, now - last), now
    worker.join()
    return took[0], longest


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.purge", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--per-conversation", type=int, default=100)
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="chatd-purge-")
    store = Store.open(root, sync=False)
    try:
        for conversation in range(1, args.conversations + 1):
            batch = Batch()
            for seq in range(1, args.per_conversation + 1):
                batch.put(records.MESSAGES, (conversation, seq), Message(
                    conversation * 1_000_000 + seq, conversation, seq, 7, 8, f"m{seq}",
                    "text/plain", BODY, seq))
            store.write(batch)
        store.purge({})
        print(f"{args.conversations * args.per_conversation:,} messages, "
              f"{_size_mb(root):.0f} MB on disk")
        every = range(1, args.conversations + 1)
        for count in (1, 100, 5_000):
            batch = Batch()
            for conversation in random.sample(every, min(count, args.conversations)):
                batch.delete(records.MESSAGES, (conversation, args.per_conversation // 2))
            store.write(batch)
            took, stall = _timed_purge(store)
            print(f"deleted in {count:>5} conversations: purge {took * 1000:,.0f} ms, "
                  f"longest loop gap {stall * 1000:,.0f} ms")
    finally:
        store.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
