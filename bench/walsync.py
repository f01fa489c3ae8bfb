"""Where to sync the WAL: on the event loop, or in a thread beside it?

`python -m bench.walsync` writes 200 one-row batches synced, alone and then from a thread
while the main thread counts loop iterations (the event loop's stand-in), once as a synced
write and once as an unsynced write followed by `flush_wal(sync=True)`. If the sync let
the main thread run, the thread would cost the loop little. docs/benchmarks.md has the
figures: it does not (rocksdict holds the GIL through the call). It also counts the
voluntary context switches one synced write costs the calling thread: the floor under
"switches per message" for a message that needs its own sync.
"""

from __future__ import annotations

import tempfile
import threading
import time

from rocksdict import Options, Rdict, WriteBatch, WriteOptions


def _switches() -> int:
    """Voluntary context switches of this thread so far."""
    status = f"/proc/self/task/{threading.get_native_id()}/status"
    with open(status) as lines:
        for line in lines:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise RuntimeError("no voluntary_ctxt_switches in " + status)


def main() -> None:
    directory = tempfile.mkdtemp(prefix="chatd-walsync-")
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    db = Rdict(directory, options)
    unsynced, synced = WriteOptions(), WriteOptions()
    unsynced.sync, synced.sync = False, True

    def syncer(mode: str, count: int, out: list[float]) -> None:
        began = time.perf_counter()
        for n in range(count):
            batch = WriteBatch(raw_mode=True)
            batch.put(b"k%d" % n, b"v" * 100)
            if mode == "flush_wal":
                db.write(batch, unsynced)
                db.flush_wal(True)
            else:
                db.write(batch, synced)
        out.append(time.perf_counter() - began)

    before = _switches()
    for n in range(500):
        batch = WriteBatch(raw_mode=True)
        batch.put(b"s%d" % n, b"v" * 300)
        db.write(batch, synced)
    print(f"voluntary context switches per synced write: {(_switches() - before) / 500:.2f}")
    began, loops = time.perf_counter(), 0
    while time.perf_counter() - began < 0.5:
        loops += 1
    baseline = loops / 0.5
    print(f"main thread alone: {baseline / 1e6:.2f} M loops/s")
    for mode in ("synced write", "flush_wal"):
        out: list[float] = []
        syncer(mode, 200, out)
        alone = out[0] / 200
        out = []
        thread = threading.Thread(target=syncer, args=(mode, 200, out))
        loops = 0
        thread.start()
        while thread.is_alive():
            loops += 1
        thread.join()
        print(f"{mode}: {alone * 1e6:.0f} us each on the caller; from a thread "
              f"{out[0] / 200 * 1e6:.0f} us each, the main thread at "
              f"{loops / out[0] / baseline:.0%} of its speed meanwhile")
    db.close()


if __name__ == "__main__":
    main()
