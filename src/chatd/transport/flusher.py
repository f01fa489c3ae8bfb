"""Writing mesh frames without a task wake-up per frame.

A plain-TCP link does not wake its writer task when a frame is queued. It asks the
mesh's `Flusher` instead, a Trio instrument whose `before_io_wait` hook runs once per
pass of the scheduler, just before the loop polls for I/O: by then every task that was
runnable has run, so one non-blocking write carries everything that pass queued on a
link (the answers of a whole commit batch, what one read of the peer produced, the
requests of one WebSocket read). Only what the kernel would not take goes to the link's
writer task, which waits for the socket to drain as before.

Why an instrument rather than hooks at the places that queue frames: frames are queued
from many places (the link's reader, the committer's callbacks, WebSocket readers, REST
handlers, timers), and a hook missed is a frame that waits for the next unrelated event.
The end of a scheduler pass is the one boundary all of them share, and it comes before
the loop can sleep, so no frame waits on it.

The hook runs outside any task, after the loop has chosen how long to sleep: it must not
reschedule a task (the loop would sleep with that task runnable) and must not raise
(Trio would drop the instrument). So the links' `flush` only writes; anything that needs
a task (a remainder, a broken socket) is handed over with `TrioToken.run_sync_soon`,
whose wake-up byte ends the coming poll at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import trio

log = logging.getLogger("chatd.transport.mesh")


class Flushable(Protocol):
    def flush(self) -> None:
        """Write what is queued, without blocking and without rescheduling any task."""
        ...


class Flusher(trio.abc.Instrument):
    """Links with frames queued since the last pass; written just before the I/O poll.
    Install with `trio.lowlevel.add_instrument` (`Mesh.run` does)."""

    __slots__ = ("_dirty", "_token")

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self._dirty: list[Flushable] = []
        self._token = token

    def add(self, link: Flushable) -> None:
        """Write `link`'s queue at the end of this scheduler pass (a link adds itself
        when its queue goes from empty to not empty, so once per pass at most)."""
        self._dirty.append(link)

    def soon(self, callback: Callable[[], None]) -> None:
        """Run `callback` in Trio's system task right after the coming poll (which it
        ends at once): for what may reschedule tasks."""
        self._token.run_sync_soon(_contained, callback)

    def before_io_wait(self, timeout: float) -> None:
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, []
        for link in dirty:
            try:
                link.flush()
            except Exception:  # never out of the hook: Trio would drop the instrument
                log.exception("mesh: flushing a link failed")


def _contained(callback: Callable[[], None]) -> None:
    # An exception out of a run_sync_soon callback would end the whole Trio run.
    try:
        callback()
    except Exception:
        log.exception("mesh: a deferred link callback failed")
