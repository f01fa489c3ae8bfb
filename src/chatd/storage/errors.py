"""What storage can fail with, in its own terms; the services say what each means to a
client (`services/commands.py`)."""

from __future__ import annotations

from chatd.config import ConfigError


class StorageError(Exception):
    """A storage operation that did not happen."""


class UnstorableValue(StorageError):
    """A value that cannot be encoded for storage (its command is refused alone)."""


class WriteFailed(StorageError):
    """A batch could not be made durable: none of its commands happened."""


class CommandFailed(StorageError):
    """A command raised something unexpected (a bug) and was refused alone."""


class Overloaded(StorageError):
    """The committer's queue is full."""


class ShuttingDown(StorageError):
    """The committer takes no more commands."""


class StoreInUse(StorageError):
    """The database is open in another process (RocksDB's LOCK file is held): a running
    shard, or a `chatd admin --data-dir` command on it."""


class RingMismatch(ConfigError):
    """The data directory was made under another ring or for another shard
    (`meta.claim_ring`). A ConfigError: the CLI prints it as an invalid setting and
    exits 2, before anything is served."""


class NotReplicated(StorageError):
    """A command that is durable here but whose range's replica does not hold it (lost,
    refused, or the range moved): not acknowledged, and a retry with the same
    client_msg_id gets the original answer once the range is served again."""

    def __init__(self, range_: str) -> None:
        super().__init__(f"range {range_!r} could not be replicated")
        self.range = range_
