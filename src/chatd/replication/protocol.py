"""The replication messages between shards (mesh requests), and their bodies (sans-I/O).

    replica.begin  {range, epoch, owner}         start (or restart) a copy: the replica
                                                 drops what it holds of the range
    replica.chunk  {range, epoch, ops}           records of the copy, any order
    replica.end    {range, epoch, next_batch}    the copy is whole; batches follow
    replica.apply  {range, epoch, batch, ops}    one committed batch's records of the
                                                 range, numbered without gaps
    placement.get  {}                            the sender's placement table, answered
                                                 with this shard's (peers learn epochs)
    placement.put  {states}                      states to adopt if newer (gossip)
    placement.claim {range, owner, replica, epoch}
                                                 without etcd, a shard a change names
                                                 takes it before the deciding shard does:
                                                 `ok`, or refused with what it knows

`ops` are encoded writes: [family, key, value or nil] (storage.store.Operation). Every
replica.* request is refused with code `stale_epoch` (and the replica's state of the
range in the error's `detail`) when its epoch is older than what the replica knows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chatd.errors import BadRequest
from chatd.storage.store import Operation

BEGIN = "replica.begin"
CHUNK = "replica.chunk"
END = "replica.end"
APPLY = "replica.apply"
PLACEMENT_GET = "placement.get"
PLACEMENT_PUT = "placement.put"
PLACEMENT_CLAIM = "placement.claim"

REPLICA_METHODS = frozenset({BEGIN, CHUNK, END, APPLY})

#: About the most one chunk of a copy carries (a mesh frame is 1 MiB by default).
CHUNK_BYTES = 256 * 1024


def malformed(what: str) -> BadRequest:
    return BadRequest(f"malformed replication message: {what}", code="malformed_command")


def header(body: Any) -> tuple[str, int]:
    """(range, epoch) of any replica.* body."""
    if not isinstance(body, Mapping):
        raise malformed("the body must be a map")
    range_, epoch = body.get("range"), body.get("epoch")
    if not isinstance(range_, str) or not isinstance(epoch, int) or isinstance(epoch, bool):
        raise malformed("range and epoch are required")
    return range_, epoch


def whole_number(body: Mapping[str, Any], name: str) -> int:
    value = body.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise malformed(f"{name} must be a whole number")
    return value


def operations(body: Mapping[str, Any], known_family: Any) -> list[Operation]:
    """The ops of a chunk or apply, checked: families this store has, byte keys, byte
    values or nil."""
    raw = body.get("ops")
    if not isinstance(raw, list):
        raise malformed("ops must be a list")
    ops: list[Operation] = []
    for op in raw:
        if not isinstance(op, list | tuple) or len(op) != 3:
            raise malformed("an op is [family, key, value]")
        family, key, value = op
        if not isinstance(family, str) or not known_family(family) \
                or not isinstance(key, bytes) or not (value is None or isinstance(value, bytes)):
            raise malformed(f"bad op for family {family!r}")
        ops.append((family, key, value))
    return ops


def wire_ops(ops: list[Operation]) -> list[list[Any]]:
    return [[family, key, value] for family, key, value in ops]
