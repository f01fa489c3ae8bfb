"""Facts about a database itself, kept in the `meta` family: which ring it was made under.

A shard's data is only right for the ring that placed it there: conversations it owns,
users whose home it is. Started under another shard list (or vnodes), or as another
shard, it would serve some keys it no longer owns and miss others. So the first start
records the ring's signature and the shard's name, and every later start compares.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from chatd.storage import records
from chatd.storage.errors import RingMismatch
from chatd.storage.store import Batch, Store

RING = "ring"
_PROCEDURE = 'docs/deploy.md, section "Resharding"'


def claim_ring(store: Store, signature: str, shard: str, *,
               shards: Sequence[str] = ()) -> None:
    """Record the ring `signature` (`HashRing.signature()`) and this `shard`'s name the
    first time a database is used, or check them against the record: raises
    `RingMismatch` when either differs. `shards` (the ring's names) only makes the error
    say what changed.

    Call it once at startup, before anything else writes: it writes directly, not
    through the group committer. A database from before this record existed (a single
    shard) simply gets the record."""
    recorded = store.get(records.META, RING)
    if recorded is None:
        batch = Batch()
        batch.durable = True
        batch.put(records.META, RING,
                  {"signature": signature, "shard": shard, "shards": list(shards)})
        store.write(batch)
        return
    if not isinstance(recorded, dict) or not isinstance(recorded.get("signature"), str) \
            or not isinstance(recorded.get("shard"), str):
        raise RingMismatch(f"storage.data_dir: the database's ring record is unreadable "
                           f"({recorded!r}); it cannot be checked against this config")
    if recorded["signature"] != signature:
        raise RingMismatch(
            f"cluster.shards: this data directory was made under another ring "
            f"({_describe(recorded.get('shards'), recorded['signature'])}) than the config "
            f"gives now ({_describe(shards, signature)}): the shard list or cluster.vnodes "
            "changed, so other shards own some of its data. Start it with the config it "
            f"was made under; to change the list, see {_PROCEDURE}")
    if recorded["shard"] != shard:
        raise RingMismatch(
            f"cluster.shard: this data directory belongs to shard {recorded['shard']!r}, "
            f"not {shard!r}. Start shard {recorded['shard']!r} on it (--shard "
            f"{recorded['shard']}) and give {shard!r} its own --data directory; moving "
            f"data between shards is resharding ({_PROCEDURE})")


def _describe(shards: object, signature: str) -> str:
    if isinstance(shards, list | tuple) and shards:
        return f"shards {', '.join(map(str, shards))}; signature {signature}"
    return f"signature {signature}"


def claim_secret(store: Store, name: str) -> bytes:
    """A random 32-byte secret kept in the database under `name` (made on first use), so
    what it signed stays valid across restarts (signed media links). Call it at startup,
    before anything else writes: it writes directly, like `claim_ring`."""
    recorded = store.get(records.META, name)
    if isinstance(recorded, bytes) and len(recorded) == 32:
        return recorded
    secret = secrets.token_bytes(32)
    batch = Batch()
    batch.durable = True
    batch.put(records.META, name, secret)
    store.write(batch)
    return secret
