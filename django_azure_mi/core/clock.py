"""Where the core reads the time and how it waits: one injectable :class:`Clock`.

The :class:`~django_azure_mi.core.refresher.Refresher` (and so every renewal: tokens, Redis re-AUTH sweeps,
delegation keys), :class:`~django_azure_mi.core.provider.TokenProvider`, the token checks and the file
cache take a ``clock`` (default :data:`SYSTEM`). Tests pass a fake one
(:class:`django_azure_mi.testing.clock.FakeClock`) and walk a token's whole life, backoff and idleness in
milliseconds instead of waiting them out.
"""

from __future__ import annotations

import asyncio
import threading
import time as _time
from typing import Final


class Clock:
    """The system's clock: ``time()`` (epoch seconds: token expiries), ``monotonic()`` (deadlines),
    ``wait(cond, timeout)`` (a condition wait, ``cond`` held), ``wait_async(event, timeout)`` (the same on an
    event loop) and ``sleep()``."""

    # the builtins themselves: TokenProvider.current() reads the clock on every call (no extra frame)
    time = staticmethod(_time.time)
    monotonic = staticmethod(_time.monotonic)

    def wait(self, cond: threading.Condition, timeout: float) -> bool:
        return cond.wait(timeout)

    def sleep(self, seconds: float) -> None:
        _time.sleep(seconds)

    async def wait_async(self, event: asyncio.Event, timeout: float) -> bool:
        """Wait on the running loop until ``event`` is set or ``timeout`` seconds passed."""
        try:
            await asyncio.wait_for(event.wait(), max(timeout, 0.0))
        except TimeoutError:
            return False
        return True

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


SYSTEM: Final = Clock()
