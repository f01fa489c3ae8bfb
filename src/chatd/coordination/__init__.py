"""Coordination through etcd: who owns what, under leases (docs/architecture.md,
"Coordination (etcd)").

`EtcdClient` speaks etcd v3's JSON gateway over httpx on Trio; `LeaseKeeper` holds a
lease and says when it may no longer be acted on; `Watch` follows a prefix across
restarts. This package imports nothing else of chatd's.
"""

from __future__ import annotations

from chatd.coordination.errors import (
    CoordinationError,
    EtcdError,
    EtcdUnavailable,
    WatchCompacted,
)
from chatd.coordination.etcd import EtcdClient
from chatd.coordination.lease import LeaseKeeper, LeaseStatistics
from chatd.coordination.watch import Watch
from chatd.coordination.wire import Compare, KeyValue, Op, TxnResult, WatchEvent

__all__ = [
    "Compare",
    "CoordinationError",
    "EtcdClient",
    "EtcdError",
    "EtcdUnavailable",
    "KeyValue",
    "LeaseKeeper",
    "LeaseStatistics",
    "Op",
    "TxnResult",
    "Watch",
    "WatchCompacted",
    "WatchEvent",
]
