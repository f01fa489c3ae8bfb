"""`Pending`: a result that arrives later, awaited or taken by callback.

The one shape every routed service call returns, whether it runs here (a group-commit
command, finished by the committer once durable) or on another shard (a mesh request,
finished when the answer arrives). Callers cannot tell the two apart, which is the point:
the same WebSocket code answers a send whose owner is local or remote.

The event a waiter sleeps on is made only when someone waits: the WebSocket path takes
its answers by callback, and a `trio.Event` per message was pure overhead there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Generic, TypeVar

import trio

log = logging.getLogger(__name__)
T = TypeVar("T")


class Pending(Generic[T]):
    __slots__ = ("_callbacks", "_event", "error", "finished", "result", "translate")

    def __init__(self) -> None:
        #: Applied to `error` before anyone sees it (the services' door maps storage
        #: errors to client errors this way, with no callback per command).
        self.translate: Callable[[BaseException], BaseException] | None = None
        self.result: T | None = None
        self.error: BaseException | None = None
        #: `result` or `error` is final.
        self.finished = False
        self._event: trio.Event | None = None
        self._callbacks: list[Callable[[Pending[T]], None]] | None = None

    @classmethod
    def done(cls, result: T) -> Pending[T]:
        """A result known at once."""
        pending: Pending[T] = cls()
        pending.result = result
        pending.finished = True
        return pending

    @classmethod
    def failed(cls, error: BaseException) -> Pending[T]:
        pending: Pending[T] = cls()
        pending.error = error
        pending.finished = True
        return pending

    def add_done_callback(self, callback: Callable[[Pending[T]], None]) -> None:
        """Call `callback(self)` once finished (at once if it already is). It must not
        block; it spares a waiting task per call, which the WebSocket path relies on."""
        if self.finished:
            callback(self)
        elif self._callbacks is None:
            self._callbacks = [callback]
        else:
            self._callbacks.append(callback)

    def set_result(self, result: T) -> None:
        self.result = result
        self.finish()

    def set_error(self, error: BaseException) -> None:
        self.error = error
        self.finish()

    def finish(self) -> None:
        """`result` or `error` is final: wake the waiter, run the callbacks."""
        if self.error is not None and self.translate is not None:
            self.error = self.translate(self.error)
        self.finished = True
        if self._event is not None:
            self._event.set()
        if self._callbacks is not None:
            callbacks, self._callbacks = self._callbacks, None
            for callback in callbacks:
                try:
                    callback(self)
                except Exception:
                    log.exception("a done-callback failed")

    async def wait_finished(self) -> None:
        """Wait until finished, without raising its error."""
        if self.finished:
            await trio.lowlevel.checkpoint()
            return
        if self._event is None:
            self._event = trio.Event()
        await self._event.wait()

    async def wait(self) -> T:
        await self.wait_finished()
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]  # set whenever error is None
