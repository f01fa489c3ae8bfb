"""What the etcd layer fails with, in its own terms (never an httpx exception).

Messages name the endpoint and what went wrong; they never carry a password or an
auth token, so callers may log them as they are.
"""

from __future__ import annotations


class CoordinationError(Exception):
    """Any failure of the etcd layer: catch this to handle them all alike."""


class EtcdError(CoordinationError):
    """etcd answered and refused the request (a bad key, an unknown lease, bad credentials).

    `code` is the gRPC status code etcd gave (3 invalid argument, 5 not found,
    16 unauthenticated, …), or 0 when the answer was not one etcd would give.
    """

    def __init__(self, message: str, *, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class EtcdUnavailable(CoordinationError):
    """No endpoint answered within the timeout.

    From a write (put, delete, txn) this means the outcome is unknown: the request may
    have reached etcd and been applied. Reads and lease calls are safe to retry.
    """


class WatchCompacted(CoordinationError):
    """A watch cannot resume: etcd has compacted its history past the revision wanted.

    The events in between are gone. Re-list the prefix (`get_prefix`) to learn the
    present state and its revision, then watch again from that revision + 1.
    `revision` is the oldest revision etcd still has.
    """

    def __init__(self, revision: int) -> None:
        super().__init__(f"etcd has compacted its history up to revision {revision}: "
                         "re-list the prefix and watch again from the listing's revision + 1")
        self.revision = revision
