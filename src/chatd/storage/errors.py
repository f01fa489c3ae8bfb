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


class RingMismatch(ConfigError):
    """The data directory was made under another ring or for another shard
    (`meta.claim_ring`). A ConfigError: the CLI prints it as an invalid setting and
    exits 2, before anything is served."""
