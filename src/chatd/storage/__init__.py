"""Durable state in embedded RocksDB. The only package that imports rocksdict.

Rules: every record is laid out once, in `records` (key and value, read and write);
values are msgpack (never pickle); one command is one WriteBatch, and appends share
synced batches through the `GroupCommitter`.
"""

from chatd.storage import records
from chatd.storage.group_commit import Command, CommitStatistics, GroupCommitter
from chatd.storage.meta import claim_ring, claim_secret
from chatd.storage.store import Batch, Store

__all__ = ["Batch", "Command", "CommitStatistics", "GroupCommitter", "Store", "claim_ring",
           "claim_secret", "records"]
