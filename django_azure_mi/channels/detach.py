"""Await a task without letting the awaiter's cancellation cancel it, at no extra turn of the event loop.

``asyncio.shield(task)`` does the same with a second future between the two tasks: when ``task`` ends, one
turn of the loop runs the shield's callback, which completes its future, and another wakes the awaiter. The
core layer's receive runs a pop this way for every message (``layers.RedisChannelLayer``); under a burst
each turn waits behind everything else ready in the loop, and those two turns a message cost the layer its
p99 latency goal (``benchmarks/channels.py``, docs/channels.md).

``Detached`` is what the awaiter waits on instead: a Future-like object (``asyncio.isfuture``: it has
``_asyncio_future_blocking``), so the awaiting task registers its wake-up with it, which goes straight onto
``task``. When the awaiting task is cancelled, asyncio cancels the object it waits on: ``Detached.cancel``
takes the wake-up off ``task`` and wakes the awaiter with a cancelled future instead, so the awaiter raises
``CancelledError`` at once and ``task`` runs on.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine, Generator
from contextvars import Context
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def start(coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """A task for ``coro``, started eagerly where asyncio can (Python 3.12+: it runs to its first await
    now, instead of on the loop's next turn)."""
    if sys.version_info >= (3, 12):
        return asyncio.Task(coro, loop=asyncio.get_running_loop(), eager_start=True)
    return asyncio.ensure_future(coro)


class Detached(Generic[T]):
    """``await Detached(task)``: ``task``'s result; cancelling the awaiter leaves ``task`` running."""

    __slots__ = ("_asyncio_future_blocking", "_task", "_wakeups")

    def __init__(self, task: asyncio.Future[T]) -> None:
        self._task = task
        self._wakeups: list[tuple[Callable[..., Any], Context | None]] = []
        self._asyncio_future_blocking = False

    def __await__(self) -> Generator[Any, None, T]:
        if not self._task.done():
            self._asyncio_future_blocking = True
            yield self  # the awaiting task calls add_done_callback, and cancel if it is cancelled
        return self._task.result()

    # What asyncio's Task calls on the object it waits on.
    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._task.get_loop()

    def add_done_callback(self, fn: Callable[..., Any], *, context: Context | None = None) -> None:
        self._wakeups.append((fn, context))
        self._task.add_done_callback(fn, context=context)

    def remove_done_callback(self, fn: Callable[..., Any]) -> int:
        self._wakeups = [(f, c) for f, c in self._wakeups if f != fn]
        return self._task.remove_done_callback(fn)

    def done(self) -> bool:
        return self._task.done()

    def cancelled(self) -> bool:
        return False

    def result(self) -> T:
        return self._task.result()

    def exception(self) -> BaseException | None:
        return self._task.exception()

    def cancel(self, msg: Any = None) -> bool:
        """The awaiter is being cancelled: wake it with a cancelled future; ``task`` runs on. Once ``task``
        has ended, refuse (asyncio then raises ``CancelledError`` in the awaiter when it wakes, and the
        result stays on ``task``)."""
        if self._task.done():
            return False
        loop = self._task.get_loop()
        cancelled = loop.create_future()
        cancelled.cancel(msg)
        for fn, context in self._wakeups:
            self._task.remove_done_callback(fn)
            loop.call_soon(fn, cancelled, context=context)
        self._wakeups.clear()
        return True
