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

import asyncio
import contextlib
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

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

    async def wait_async(self, event: asyncio.Event, timeout: float) -> bool:
        try:  # the caller loops on the fake time
            await asyncio.wait_for(event.wait(), self.POLL)
        except TimeoutError:
            return False
        return True

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


@contextlib.contextmanager
def on_fake_clock(clock: FakeClock, *emulators: Any) -> Iterator[FakeClock]:
    """Run the package's runtime (token providers, the Redis re-AUTH schedule and sweeper, delegation keys)
    and the given identity endpoint emulators (``IMDSEmulator``: the tokens it stamps, which the attached
    stand-ins judge expiry by) on ``clock``; the system clock again afterwards.

        with on_fake_clock(FakeClock(time.time()), azure_imds) as clock:
            cache.set("k", 1)
            clock.advance(3600)     # a token's lifetime: renewed, re-AUTHed, nothing closed
    """
    from .. import runtime

    saved = [(emulator, emulator.clock) for emulator in emulators]
    runtime.reset(clock)
    for emulator in emulators:
        emulator.clock = clock
    try:
        yield clock
    finally:
        for emulator, previous in saved:
            emulator.clock = previous
        runtime.reset()


class EndpointCredential:
    """A ``TokenCredential`` that asks the local identity endpoint emulator (IMDS flavour, at
    ``AZURE_POD_IDENTITY_AUTHORITY_HOST``) for every token, without a cache: azure-identity's own cache runs
    on the system clock, which a fake clock leaves behind (it would hand back a token the fake clock already
    sees expired). Loopback only. With :func:`on_fake_clock`::

        AZURE_MANAGED_IDENTITY = {"CREDENTIAL": "django_azure_mi.testing.clock.endpoint_credential"}
    """

    def __init__(self, url: str, client_id: str | None = None) -> None:
        from urllib.parse import urlsplit

        if urlsplit(url).hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"EndpointCredential talks to a local emulator only, not {url!r}")
        self.url, self.client_id = url.rstrip("/"), client_id

    def get_token_info(self, *scopes: str, options: Any = None) -> Any:
        import json
        import urllib.request
        from urllib.parse import urlencode

        from azure.core.credentials import AccessTokenInfo

        from .imds import IMDS_PATH

        query = {"api-version": "2018-02-01", "resource": scopes[0].removesuffix("/.default")}
        if self.client_id:
            query["client_id"] = self.client_id
        request = urllib.request.Request(
            f"{self.url}{IMDS_PATH}?{urlencode(query)}", headers={"Metadata": "true"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = json.loads(response.read())
        return AccessTokenInfo(body["access_token"], int(body["expires_on"]))

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        info = self.get_token_info(*scopes)
        return AccessToken(info.token, info.expires_on)


def endpoint_credential() -> EndpointCredential:
    """The ``CREDENTIAL`` factory for :class:`EndpointCredential` (the emulator the environment points at)."""
    import os

    return EndpointCredential(
        os.environ["AZURE_POD_IDENTITY_AUTHORITY_HOST"], os.environ.get("AZURE_CLIENT_ID")
    )
