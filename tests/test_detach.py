"""``channels.detach.Detached``: await a task that the awaiter's cancellation leaves running (no server)."""

from __future__ import annotations

import asyncio

import pytest

from django_azure_mi.channels.detach import Detached, start


async def _slow(gate: asyncio.Event, value: object) -> object:
    await gate.wait()
    if isinstance(value, Exception):
        raise value
    return value


def test_the_awaiter_gets_the_result_or_the_error():
    async def main():
        gate = asyncio.Event()
        gate.set()
        assert await Detached(start(_slow(gate, 7))) == 7
        with pytest.raises(KeyError):
            await Detached(start(_slow(gate, KeyError("k"))))
        done = start(_slow(gate, 8))
        await asyncio.sleep(0)
        assert done.done() and await Detached(done) == 8  # already ended: no suspension

    asyncio.run(main())


def test_cancelling_the_awaiter_leaves_the_task_running_and_wakes_the_awaiter_at_once():
    async def main():
        gate = asyncio.Event()
        task = start(_slow(gate, "popped"))
        awaiter = asyncio.ensure_future(_await(task))
        await asyncio.sleep(0.01)
        awaiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await awaiter  # before the task ends: the gate is still closed
        assert not task.done() and not task.cancelled()
        gate.set()
        assert await task == "popped"

    async def _await(task):
        return await Detached(task)

    asyncio.run(main())


def test_a_cancel_after_the_task_ended_is_refused_and_the_result_stays_on_the_task():
    """The task ended but the awaiter has not woken yet: asyncio raises CancelledError in the awaiter when
    it wakes (as with any future); the result is the task's, for whoever takes it."""

    async def main():
        gate = asyncio.Event()
        task = start(_slow(gate, "popped"))
        detached = Detached(task)

        async def waiter():
            return await detached

        awaiter = asyncio.ensure_future(waiter())
        await asyncio.sleep(0.01)
        gate.set()
        while not task.done():
            await asyncio.sleep(0)
        assert detached.cancel() is False
        awaiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await awaiter
        assert task.result() == "popped"

    asyncio.run(main())


def test_a_timeout_around_the_awaiter_times_out_and_the_task_runs_on():
    async def main():
        gate = asyncio.Event()
        task = start(_slow(gate, 1))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(_await(task), 0.05)
        assert not task.done()
        gate.set()
        assert await task == 1

    async def _await(task):
        return await Detached(task)

    asyncio.run(main())
