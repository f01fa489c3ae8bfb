"""Durable state in embedded RocksDB. The only package that imports rocksdict.

Rules: keys are built only in `keys`, values are msgpack (never pickle), one command is one
WriteBatch, and appends share synced batches through the `GroupCommitter`.
"""

from chatd.storage.group_commit import CommitStatistics, GroupCommitter, Pending
from chatd.storage.store import Batch, Store

__all__ = ["Batch", "CommitStatistics", "GroupCommitter", "Pending", "Store"]
