"""A fake clock for the token core (:class:`django_azure_mi.core.clock.Clock`): time stands still until the
test advances it, so a token's whole life - renewal at the margin, backoff through an outage, idleness -
runs in milliseconds.

    clock = FakeClock()
    provider = TokenProvider(credential, scope, clock=clock)
    clock.advance(3600)   # an hour later: the background renewal has run (see wait_for)

Background threads keep running on the real clock's scheduler: a thread waiting on the fake clock re-checks
the fake time every few milliseconds and is woken at once by :meth:`FakeClock.advance`.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable

from ..core.clock import Clock


class FakeClock(Clock):
    """Epoch time from ``start``; monotonic time from 0. Only :meth:`advance` (or :meth:`sleep`) moves it."""

    POLL = 0.002  # real seconds between a waiting thread's looks at the fake time

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now, self._mono = float(start), 0.0
        self._lock = threading.Lock()
        self._waiting: weakref.WeakSet[threading.Condition] = weakref.WeakSet()

    def time(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every thread waiting on this clock."""
        with self._lock:
            self._now += seconds
            self._mono += seconds
            waiting = list(self._waiting)
        for cond in waiting:
            with cond:
                cond.notify_all()

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def wait(self, cond: threading.Condition, timeout: float) -> bool:
        with self._lock:
            self._waiting.add(cond)
        return cond.wait(self.POLL)  # the caller loops on the fake time

    def __repr__(self) -> str:
        return f"<FakeClock t={self._now:.3f}>"


def wait_for(condition: Callable[[], bool], real_seconds: float = 5.0) -> bool:
    """Wait (in real time, at most ``real_seconds``) until a background thread made ``condition`` true."""
    deadline = time.monotonic() + real_seconds
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.001)
    return True
