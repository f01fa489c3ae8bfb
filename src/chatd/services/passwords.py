"""argon2id password hashing off the event loop, under a capacity limit.

Each hash costs tens of ms of CPU and `memlimit` of memory; libsodium releases the GIL, so
running it in a worker thread keeps the event loop serving while it works, and the limiter
bounds both CPU and memory however many logins arrive at once.
"""

from __future__ import annotations

import nacl.exceptions
import nacl.pwhash
import trio


class PasswordHasher:
    def __init__(self, *, opslimit: int, memlimit_bytes: int, concurrency: int) -> None:
        self._opslimit = opslimit
        self._memlimit = memlimit_bytes
        self._limiter = trio.CapacityLimiter(concurrency)
        # Verified against when a handle is unknown, so that a failed login costs the
        # same time whether or not the handle exists.
        self._decoy = nacl.pwhash.argon2id.str(b"decoy password", opslimit=opslimit,
                                               memlimit=memlimit_bytes)

    async def hash(self, password: str) -> bytes:
        def work() -> bytes:
            digest: bytes = nacl.pwhash.argon2id.str(
                password.encode(), opslimit=self._opslimit, memlimit=self._memlimit)
            return digest

        return await trio.to_thread.run_sync(work, limiter=self._limiter)

    async def verify(self, password_hash: bytes | None, password: str) -> bool:
        """True if `password` matches; with `password_hash=None`, spends the same effort
        on a decoy and returns False."""

        def work() -> bool:
            try:
                nacl.pwhash.verify(password_hash or self._decoy, password.encode())
            except nacl.exceptions.InvalidkeyError:
                return False
            return password_hash is not None

        return await trio.to_thread.run_sync(work, limiter=self._limiter)
