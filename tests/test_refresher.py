"""The one renewal loop on its own: single flight, Defer, backoff, close, fork."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from django_azure_mi.core.refresher import Defer, Idleness, NotReady, Refresher

from .conftest import in_child, run_threads


class Source:
    """A value source whose answers the test scripts: values, Defer or errors, one per call."""

    def __init__(self, *answers: object, delay: float = 0.0) -> None:
        self.answers = list(answers)
        self.calls = 0
        self.delay = delay

    def __call__(self, previous: object) -> object:
        self.calls += 1
        time.sleep(self.delay)
        answer = self.answers.pop(0) if self.answers else self.calls
        if isinstance(answer, Exception):
            raise answer
        return answer


def refresher(source: Source, **options) -> Refresher:
    options.setdefault("schedule", lambda value: time.time() + 3600)
    options.setdefault("retry_base", 0.05)
    return Refresher("test", source, **options)


def test_twenty_cold_callers_make_one_fetch():
    source = Source(delay=0.2)
    r = refresher(source)
    assert run_threads(20, lambda: r.get(5)) == [1] * 20
    assert source.calls == 1 and r.waits == 20
    r.close(join=1)


def test_a_hundred_cold_coroutines_make_one_fetch_and_no_thread_each():
    """Async callers wait on their event loop for the worker's single flight: one fetch, no thread per
    caller (threads alive while they wait: the worker only), and the loop keeps running meanwhile: the
    fetch ends only after the loop has ticked ten times while every caller waits (no timing assumed)."""
    ticked = threading.Event()

    class Gated(Source):
        def __call__(self, previous: object) -> object:
            assert ticked.wait(30), "the event loop stopped while its callers waited"
            return super().__call__(previous)

    source = Gated()
    r = refresher(source)

    async def main():
        before = threading.active_count()
        tasks = [asyncio.create_task(r.get_async(30)) for _ in range(100)]
        ticks = 0
        while not all(t.done() for t in tasks):
            await asyncio.sleep(0.01)
            ticks += 1
            assert threading.active_count() <= before + 1  # the worker
            if ticks == 10:
                assert not any(t.done() for t in tasks)
                ticked.set()
        return [t.result() for t in tasks], ticks

    values, ticks = asyncio.run(main())
    assert values == [1] * 100 and source.calls == 1 and ticks >= 10
    assert r._watchers == []  # every waiter left
    r.close(join=1)


def test_async_callers_see_failures_backoff_and_close():
    r = refresher(Source(ValueError("down")), retry_cap=30, retry_base=30)

    async def reason(timeout: float) -> str:
        with pytest.raises(NotReady) as info:
            await r.get_async(timeout)
        return info.value.reason

    assert asyncio.run(reason(5)) == "failed"
    assert asyncio.run(reason(5)) == "backoff"  # the next attempt is 30 s away
    r.close(join=1)
    assert asyncio.run(reason(5)) == "closed"


def test_close_wakes_an_async_waiter():
    r = refresher(Source(delay=1.0))

    async def main():
        task = asyncio.create_task(r.get_async(10))
        await asyncio.sleep(0.1)
        threading.Thread(target=r.close).start()  # from another thread, as the runtime closes it
        with pytest.raises(NotReady) as info:
            await asyncio.wait_for(task, 2)
        return info.value.reason

    assert asyncio.run(main()) == "closed"


def test_defer_is_not_a_failure_and_the_value_stays():
    source = Source("v1", Defer(time.time() + 3600, "upstream cache"))
    r = refresher(source)
    assert r.get(5) == "v1"
    assert r.refresh(wait=True, timeout=5) is False  # an attempt, no new value
    assert r.value == "v1" and r.failed == 0 and r.last_error is None and r.attempts == 2
    r.close(join=1)


def test_a_failure_is_reported_then_backed_off_then_recovered():
    source = Source(ValueError("boom eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"), "v2")
    r = refresher(source, retry_cap=0.1)
    with pytest.raises(NotReady) as info:
        r.get(5)
    assert info.value.reason == "failed"
    assert r.last_error and "eyJ" not in r.last_error  # redacted
    assert r.last_exception is not None and r.last_exception.__traceback__ is None
    assert r.get(5) == "v2"  # the backoff retry (<= 0.1 s) brought it
    assert r.last_error is None and r.failed == 1
    r.close(join=1)


def test_close_wakes_waiters_and_stops_the_worker():
    r = refresher(Source(delay=0.5))
    errors = []

    def wait() -> None:
        with pytest.raises(NotReady) as info:
            r.get(10)
        errors.append(info.value.reason)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.1)
    r.close(join=2)
    waiter.join(2)
    assert errors == ["closed"] and not r._thread.is_alive()


def test_subscribers_see_each_new_value_and_can_leave():
    seen = []
    r = refresher(Source("a", "b", "c"))
    leave = r.subscribe(seen.append)
    r.get(5)
    r.refresh(wait=True)
    leave()
    r.refresh(wait=True)
    assert seen == ["a", "b"] and r.value == "c"
    r.close(join=1)


def test_fork_while_the_lock_is_held_gets_a_new_worker_in_the_child():
    r = refresher(Source())
    assert r.get(5) == 1
    held, release = threading.Event(), threading.Event()

    def hold():
        with r._lock:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(5)
    try:  # no fork hook for this refresher: the pid check on the slow path does it
        result = in_child(lambda: {"refreshed": r.refresh(wait=True, timeout=5), "value": r.value})
    finally:
        release.set()
        holder.join()
    assert result == {"ok": True, "refreshed": True, "value": 2}
    r.close(join=1)


def test_a_value_nobody_reads_stops_being_renewed_and_the_next_reader_wakes_it():
    """Invariant 7: a due renewal with no reader since ``idle_after`` goes IDLE (the thread exits); the next
    reader's poke starts a worker again, which renews at once (the value was due)."""
    source = Source()
    reads = [0]
    r = refresher(
        source,
        schedule=lambda value: time.time() + 0.2,
        idleness=Idleness(lambda: reads[0], lambda value: 0.5),
    )
    assert r.get(5) == 1
    deadline = time.time() + 5
    while r.idleness.idled == 0 and time.time() < deadline:
        time.sleep(0.05)
    assert r.idleness.idled == 1 and r._thread is None and r.poke_after == 0.0
    calls = source.calls
    assert 2 <= calls <= 5  # renewed while the idle span ran, then stopped
    time.sleep(0.6)
    assert source.calls == calls  # nothing renews an idle value
    reads[0] += 1  # a reader: the hot path sees poke_after = 0 and pokes
    r.poke()
    deadline = time.time() + 5
    while source.calls == calls and time.time() < deadline:
        time.sleep(0.02)
    assert source.calls == calls + 1 and r._thread is not None
    r.close(join=1)


def test_a_value_that_is_read_keeps_being_renewed():
    source = Source()
    r = refresher(
        source,
        schedule=lambda value: time.time() + 0.1,
        idleness=Idleness(lambda: source.calls, lambda value: 0.3),
    )
    r.get(5)
    time.sleep(1.0)
    assert r.idleness.idled == 0 and source.calls >= 5  # activity moves (here: with every renewal)
    r.close(join=1)
