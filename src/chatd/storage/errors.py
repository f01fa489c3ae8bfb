"""What storage can fail with, in its own terms; the services say what each means to a
client (`services/commands.py`)."""

from __future__ import annotations


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
