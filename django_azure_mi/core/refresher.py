"""``Refresher[T]``: the ONE single-flight background renewal loop of the package.

Tokens (:class:`~django_azure_mi.core.provider.TokenProvider`), the Redis re-AUTH sweep and user delegation
keys all renew through it. A refresher owns one value of type ``T`` and one worker thread that replaces the
value before it is due; callers read the value without taking a lock and wait only when none is usable.

State machine (fields under ``_cond``)::

    IDLE ──start / poke / get / refresh──▶ SLEEPING ──now ≥ _next_at, or _wanted──▶ FETCHING
      ▲  ◀── due, but no caller for idle_after(value) s ──┘     ▲                      │
      │ fork (child)                         ├── value ─────── _next_at = schedule(value)
      │                                      ├── Defer(at) ─── _next_at = at  (not a failure)
      │                                      └── exception ─── _next_at = now + backoff, _failures += 1
    any ──close()──▶ CLOSED  (terminal: the worker exits, waiters raise NotReady("closed"))

IDLE is "no worker thread" (``_thread is None``); FETCHING is ``_in_flight``.

Invariants
1. Single flight: only the worker calls ``fetch``, one call at a time; ``fetch``, subscribers and logging
   run without ``_cond`` held.
2. ``_in_flight`` is True exactly while the worker is inside ``fetch``.
3. ``_attempts`` grows by one per finished worker attempt (value, ``Defer`` or failure); a waiter compares it
   with the snapshot it took, so it wakes for the outcome of an attempt that started after it asked.
4. ``value`` and ``poke_after`` are written under ``_cond`` and read without it (hot path). A reader that
   sees ``now >= poke_after`` takes the slow path (``poke``); before that no reader touches the lock.
   ``poke_after`` is ``_next_at`` while a worker sleeps, ``inf`` while it fetches, ``0`` while IDLE.
5. Fork: the child's locks and thread are new and ``_next_at`` is re-scheduled (re-jittered), value kept.
   ``after_fork()`` does it when the runtime's fork hook calls it; every slow path also compares the pid
   first, before taking a lock the parent may have held at fork time.
6. ``last_exception`` carries neither traceback nor context: frames could hold secrets.
8. Async callers (:meth:`Refresher.get_async`) wait on the event loop, not in a thread: every settled
   attempt and ``close()`` call their watchers (under ``_cond``), which wake their loops thread-safely.
7. Idle: when a scheduled renewal is due and ``activity()`` has not changed for ``idle_after(value)``
   seconds, the worker goes back to IDLE instead (its thread exits, ``poke_after`` = 0): the next reader
   pokes it awake, and renews then, in the background while the value is usable, else waiting for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from . import policy
from .clock import SYSTEM, Clock
from .errors import describe_error

logger = logging.getLogger("django_azure_mi.tokens")

T = TypeVar("T")


class Defer(Exception):
    """Raised by ``fetch``: nothing new yet, but nothing failed either; try again at ``at`` (epoch)."""

    def __init__(self, at: float, why: str) -> None:
        super().__init__(why)
        self.at = at


class NotReady(Exception):
    """No usable value within the wait. ``reason``: "closed", "failed" (the attempt the caller waited for
    failed), "backoff" (failing; the next try is after the deadline, in ``retry_in`` s) or "timeout"."""

    def __init__(self, reason: str, retry_in: float = 0.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_in = retry_in


class _Waits(Generic[T]):
    """:class:`Refresher`'s callers who wait for a value: threads (:meth:`get`) and coroutines
    (:meth:`get_async`, invariant 8)."""

    _cond: threading.Condition
    _watchers: list[Callable[[], None]]
    _usable_until: Callable[[T], float]
    value: T | None
    closed: bool
    attempts: int
    waits: int
    clock: Clock
    _in_flight: bool
    _failures: int
    _next_at: float
    _wanted: bool

    def _check_fork(self) -> None: ...
    def _ensure_worker(self) -> None: ...

    def get(self, timeout: float) -> T:
        """A usable value, waiting at most ``timeout`` seconds for the worker. A caller who finds none asks
        for an attempt now, unless the source is failing (then the backoff decides when)."""
        self._check_fork()
        deadline = self.clock.time() + timeout
        with self._cond:
            self._ensure_worker()
            seen = self.attempts
            while (value := self._ready(seen, deadline)) is None:
                self.clock.wait(self._cond, deadline - self.clock.time())
            return value

    def _ready(self, seen: int, deadline: float) -> T | None:
        """With ``_cond`` held: a usable value; None to wait (asking for an attempt if none is under way);
        or :class:`NotReady`. ``seen``: the attempts finished when the caller came."""
        value, now = self.value, self.clock.time()
        if value is not None and now < self._usable_until(value):
            self.waits += 1
            return value
        if self.closed:
            raise NotReady("closed")
        if self.attempts > seen:
            raise NotReady("failed")
        if not self._in_flight:
            if self._failures and self._next_at > deadline:
                raise NotReady("backoff", self._next_at - now)
            if not self._failures:
                self._wanted = True
                self._cond.notify_all()
        if deadline - now <= 0:
            raise NotReady("timeout")
        return None

    async def get_async(self, timeout: float) -> T:
        """:meth:`get` for a coroutine: the wait is on the event loop (woken by the worker), not a thread.
        Takes ``_cond`` only for moments: it is never held across a fetch (invariant 1)."""
        self._check_fork()
        loop = asyncio.get_running_loop()
        settled = asyncio.Event()

        def wake() -> None:
            loop.call_soon_threadsafe(settled.set)

        deadline = self.clock.time() + timeout
        with self._cond:
            self._ensure_worker()
            seen = self.attempts
            self._watchers = [*self._watchers, wake]
        try:
            while True:
                with self._cond:
                    settled.clear()  # a wake-up from now on is for what _ready sees next
                    value = self._ready(seen, deadline)
                if value is not None:
                    return value
                await self.clock.wait_async(settled, deadline - self.clock.time())
        finally:
            with self._cond:
                self._watchers = [w for w in self._watchers if w is not wake]

    def _wake_watchers(self) -> None:
        for wake in self._watchers:
            with contextlib.suppress(RuntimeError):  # its loop is closed: the waiter is gone
                wake()


class Refresher(_Waits[T]):
    """Keeps a value of type ``T`` fresh in one background thread (see the module docstring).
    ``fetch(previous)`` returns a new value, raises :class:`Defer`, or fails; ``schedule(value)`` says when
    to renew it (epoch seconds, jitter included); ``usable_until(value)`` until when it may be handed out;
    ``describe(value)`` what logs say of it (never a secret); ``idleness`` when to stop (invariant 7)."""

    def __init__(
        self,
        name: str,
        fetch: Callable[[T | None], T],
        *,
        schedule: Callable[[T], float],
        usable_until: Callable[[T], float] = lambda value: math.inf,
        describe: Callable[[T], str] = lambda value: "",
        retry_base: float = 1.0,
        retry_cap: float = 60.0,
        on_fork: Callable[[], None] | None = None,
        log_level: int = logging.INFO,
        label: str = "",  # what the logs say it is for, e.g. "scope=... identity=..."
        idleness: Idleness[T] | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        self.name, self._fetch, self._schedule, self._usable_until = name, fetch, schedule, usable_until
        self._describe, self._on_fork, self.label, self.idleness = describe, on_fork, label, idleness
        self._log_level, self.clock = log_level, clock  # "acquired" lines' level; time and waits (.clock)
        self.retry_base, self.retry_cap = float(retry_base), float(retry_cap)
        self.value: T | None = None
        self.last_error: str | None = None  # class and redacted message of the last failure, until a success
        self.last_exception: BaseException | None = None
        self.closed, self._failures, self._next_at = False, 0, math.inf  # _failures: consecutive
        self._subscribers: list[Callable[[T], None]] = []
        self._watchers: list[Callable[[], None]] = []  # async waiters' wake-ups (invariant 8)
        # finished attempts (value, Defer or failure), values installed, failed attempts, callers that waited
        self.attempts = self.acquired = self.failed = self.waits = 0
        self._reset_sync()

    def _reset_sync(self) -> None:
        """(Re)create what does not survive fork."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._in_flight = self._wanted = False
        self.poke_after = 0.0

    # ------------------------------------------------------------------ callers

    def poke(self) -> None:
        """Start the worker if needed and wake it if the value is due (the hot path's slow branch)."""
        self._check_fork()
        with self._cond:
            self._ensure_worker()
            if self.clock.time() >= self._next_at:
                self._cond.notify_all()

    def refresh(self, *, wait: bool = False, timeout: float = 15.0) -> bool:
        """Ask for an attempt now. With ``wait``, block until it finished and return whether a new value
        was installed; callers keep getting the current value meanwhile."""
        self._check_fork()
        with self._cond:
            self._ensure_worker()
            seen = self.attempts + (1 if self._in_flight else 0)
            acquired = self.acquired
            self._wanted = True
            self._cond.notify_all()
            if not wait:
                return True
            deadline = self.clock.monotonic() + timeout
            while self.attempts <= seen and not self.closed:
                remaining = deadline - self.clock.monotonic()
                if remaining <= 0:
                    return False
                self.clock.wait(self._cond, remaining)
            return self.acquired > acquired

    def install(self, value: T) -> None:
        """Install a value obtained outside the worker (e.g. a claims challenge answered in the caller)."""
        self._settle(value, counted=False)

    def subscribe(self, callback: Callable[[T], None]) -> Callable[[], None]:
        """Call ``callback(value)`` (from the installing thread) for every new value; returns unsubscribe."""
        self._subscribers = [*self._subscribers, callback]  # copy on write: read without the lock

        def unsubscribe() -> None:
            self._subscribers = [c for c in self._subscribers if c is not callback]

        return unsubscribe

    def close(self, join: float | None = None) -> None:
        """Stop the worker for good (waiters get ``NotReady("closed")``); ``join``: wait for it that long."""
        self._check_fork()
        with self._cond:
            self.closed = True
            self._cond.notify_all()
            self._wake_watchers()
            thread = self._thread
        if join and thread is not None and thread is not threading.current_thread():
            thread.join(join)

    def after_fork(self) -> None:
        """In a forked child: new locks, no worker; the next renewal re-jittered so that N children of one
        parent don't renew at the same instant."""
        self._reset_sync()
        if self.value is not None:
            self._next_at = self._schedule(self.value)
        if self._on_fork is not None:
            self._on_fork()

    # ------------------------------------------------------------------ the worker

    def _check_fork(self) -> None:
        if self._pid != os.getpid():
            self.after_fork()

    def _ensure_worker(self) -> None:
        """Call with ``_cond`` held."""
        if self._thread is None and not self.closed:
            name = f"django-azure-mi {self.name} {self.label}".strip()
            self._thread = threading.Thread(target=self._run, name=name, daemon=True)
            self._thread.start()
            self.poke_after = self._next_at

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self.closed and not self._wanted and self.clock.time() < self._next_at:
                    self.clock.wait(self._cond, min(self._next_at - self.clock.time(), 3600.0))
                if self.closed:
                    return
                if not self._wanted and self.idleness is not None and self.idleness.idle(self.value, self):
                    self._thread, self.poke_after = None, 0.0  # IDLE: the next reader's poke starts a worker
                    return
                self._wanted = False
                self._in_flight = True
                self.poke_after = math.inf  # the worker is on it: readers need not poke
                previous = self.value
            try:
                outcome: T | Exception = self._fetch(previous)
            except Exception as exc:
                outcome = exc
            if self.closed:  # closed meanwhile: drop the outcome quietly
                return
            self._settle(outcome)

    def _settle(self, outcome: T | Exception, counted: bool = True) -> None:
        """End an attempt: install a value; or schedule the next one (``Defer``: at its time; a failure:
        after a backoff). ``counted``: an attempt of the worker (not a value installed from outside)."""
        now = self.clock.time()
        deferred = outcome if isinstance(outcome, Defer) else None
        failure = outcome if isinstance(outcome, Exception) and deferred is None else None
        error, valid_for, subscribers = "", 0.0, []
        if failure is not None:
            error = describe_error(failure)
            failure.__traceback__ = failure.__context__ = failure.__cause__ = None
        with self._cond:
            if deferred is not None:
                next_at = deferred.at
            elif failure is not None:
                self._failures += 1
                self.failed += 1
                self.last_error, self.last_exception = error, failure
                valid_for = self._usable_until(self.value) - now if self.value is not None else 0.0
                next_at = now + policy.backoff(self._failures, self.retry_base, self.retry_cap, valid_for)
            elif not isinstance(outcome, Exception):
                self.value = outcome
                self.acquired += 1
                self._failures = 0
                self.last_error = self.last_exception = None
                next_at = self._schedule(outcome)
                subscribers = self._subscribers
            self._next_at = next_at = max(next_at, now)
            self.poke_after = next_at if self._thread is not None else 0.0
            if counted:
                self.attempts += 1
                self._in_flight = False
            if deferred is not None or failure is not None or logger.isEnabledFor(self._log_level):
                _log(self, outcome, error, self._failures, valid_for, next_at - now)  # before waiters see it
            self._cond.notify_all()
            self._wake_watchers()
        if failure is None and not isinstance(outcome, Exception):
            for callback in subscribers:
                try:
                    callback(outcome)
                except Exception as exc:
                    logger.exception("%s subscriber %r failed: %s", self.name, callback, describe_error(exc))


class Idleness(Generic[T]):
    """Whether nobody has read a refresher's value for ``idle_after(value)`` seconds, judged from a counter
    of the readers' calls (``activity``) each time a renewal comes due (invariant 7). ``idled``: how often
    the worker went idle."""

    def __init__(
        self, activity: Callable[[], int], idle_after: Callable[[T], float], clock: Clock = SYSTEM
    ) -> None:
        self.activity, self.idle_after, self.clock = activity, idle_after, clock
        self.seen, self.active_at, self.idled = -1, clock.time(), 0

    def idle(self, value: T | None, owner: Refresher[T]) -> bool:
        """Called by ``owner``'s worker (``_cond`` held) when a renewal of ``value`` is due."""
        now, count = self.clock.time(), self.activity()
        if value is None or count != self.seen:
            self.seen, self.active_at = count, now
            return False
        if now - self.active_at < self.idle_after(value):
            return False
        self.idled += 1
        said = "renewal stops until the next call"
        logger.info(
            "%s idle: %s no caller for %.0fs; %s", owner.name, owner.label, now - self.active_at, said
        )
        return True


def _log(
    self: Refresher[Any], outcome: object, error: str, failures: int, valid_for: float, next_in: float
) -> None:
    """One line per attempt outcome (never the value: ``describe`` says what may be said of it)."""
    if isinstance(outcome, Defer):
        logger.info(
            "%s refresh deferred: %s %s; asking again in %.0fs", self.name, self.label, outcome, next_in
        )
    elif isinstance(outcome, Exception):
        logger.log(
            logging.WARNING if valid_for > 0 or failures == 1 else logging.ERROR,
            "%s refresh failed: %s error=%s attempt=%d valid_for=%ds next_retry_in=%.1fs",
            *(self.name, self.label, error, failures, max(0.0, min(valid_for, 1e9)), next_in),
        )
    else:
        said = self._describe(outcome)
        logger.log(
            self._log_level, "%s acquired: %s %s next_refresh_in=%ds", self.name, self.label, said, next_in
        )
