"""The token core on a fake clock (django_azure_mi.testing.clock): renewal at the margin, riding out an
outage with backoff, recovery, a clear error after expiry, backoff growth and idleness - a token's whole
life in milliseconds, where the real-time tests (test_tokens, test_outages) wait it out against the real
identity endpoint emulator."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import jwt
import pytest
from azure.core.credentials import AccessTokenInfo

from django_azure_mi.core.errors import TokenUnavailableError
from django_azure_mi.core.provider import TokenProvider
from django_azure_mi.core.refresher import Refresher
from django_azure_mi.testing.clock import FakeClock, wait_for

SCOPE = "https://storage.azure.com/.default"


class Minting:
    """A TokenCredential on a fake clock: JWTs that live ``ttl`` seconds; ``failing`` makes it raise."""

    def __init__(self, clock: FakeClock, ttl: int = 3600) -> None:
        self.clock, self.ttl, self.calls, self.failing = clock, ttl, 0, False

    def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        self.calls += 1
        if self.failing:
            raise ConnectionError("the identity endpoint is down")
        now = int(self.clock.time())
        claims = {"iat": now, "nbf": now, "exp": now + self.ttl, "oid": "o", "n": self.calls}
        return AccessTokenInfo(jwt.encode(claims, "k" * 32, algorithm="HS256"), now + self.ttl)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def provider(clock):
    providers: list[TokenProvider] = []

    def make(**options: Any) -> tuple[TokenProvider, Minting]:
        source = Minting(clock, options.pop("ttl", 3600))
        made = TokenProvider(source, SCOPE, clock=clock, refresh_margin=300, **options)
        providers.append(made)
        return made, source

    yield make
    for made in providers:
        made._refresher.close(join=2)


def step(clock: FakeClock, seconds: float, by: float = 1.0) -> None:
    """Advance ``seconds`` in steps of ``by``, letting the worker look at each (a few real ms)."""
    end = clock.time() + seconds
    while clock.time() < end:
        clock.advance(min(by, end - clock.time()))
        time.sleep(0.003)


def test_the_token_is_renewed_in_the_background_at_the_margin(provider, clock):
    made, source = provider()
    first = made.current()
    assert source.calls == 1
    step(clock, 3239, by=100)  # due at 3600 - 300 - jitter (at most 60): not yet
    time.sleep(0.05)
    assert source.calls == 1 and made.current() is first
    step(clock, 62, by=2)
    assert wait_for(lambda: source.calls == 2)
    assert wait_for(lambda: made.current() is not first)
    assert made.current().expires_on > first.expires_on


def test_an_outage_is_ridden_out_while_the_token_is_valid_then_named_then_recovered(provider, clock):
    made, source = provider(timeout=15)
    first = made.current()
    source.failing = True
    step(clock, 3301, by=100)  # past the renewal: attempts fail, the held token is still served
    assert wait_for(lambda: source.calls >= 2)
    step(clock, 3569 - 3301, by=1)  # until just before it stops being handed out (expiry - 30 s)
    assert made.current() is first
    retries = source.calls - 1
    assert 4 <= retries <= 30, retries  # backoff: several tries while valid, no hot loop
    step(clock, 2, by=1)  # now unusable: a caller waits (on the fake clock) and gets a clear error
    outcome: list[Any] = []
    caller = threading.Thread(target=lambda: outcome.append(_catch(made.current)))
    caller.start()
    while caller.is_alive():
        clock.advance(0.5)
        time.sleep(0.003)
    (error,) = outcome
    assert isinstance(error, TokenUnavailableError)
    assert "Last error: ConnectionError" in str(error) and "expired" in str(error)
    source.failing = False  # the endpoint is back: the next try (after its backoff) succeeds
    step(clock, 120, by=1)
    assert wait_for(lambda: made._refresher.acquired == 2)
    assert made.current().expires_on > first.expires_on


def test_backoff_doubles_with_jitter_up_to_the_cap(clock):
    tries: list[float] = []

    def fetch(previous: Any) -> Any:
        tries.append(clock.time())
        raise ConnectionError("down")

    refresher: Refresher[Any] = Refresher("test", fetch, schedule=lambda v: clock.time() + 3600, clock=clock,
                                          retry_base=1.0, retry_cap=8.0)  # fmt: skip
    try:
        refresher.refresh()  # the first try now; every retry when the backoff says
        assert wait_for(lambda: len(tries) == 1)
        step(clock, 60, by=0.05)
    finally:
        refresher.close(join=2)
    delays = [b - a for a, b in itertools.pairwise(tries)]
    assert len(delays) >= 8, delays
    for number, delay in enumerate(delays[:6], start=1):
        expected = min(8.0, 2.0 ** (number - 1))
        assert expected * 0.5 - 0.06 <= delay <= expected + 0.06, (number, delays)


def test_an_unread_token_stops_being_renewed_and_the_next_call_wakes_it(provider, clock):
    made, source = provider(idle_lifetimes=2)
    made.current()
    # No caller: each renewal (every 3,300 s less jitter) that finds no call for 2 lifetimes since the
    # first one it saw stops instead: renewed three times, idle at the fourth.
    step(clock, 4 * 3300 + 200, by=100)
    assert wait_for(lambda: made._refresher.idleness.idled == 1)
    calls = source.calls
    assert calls == 4
    step(clock, 1000, by=100)
    assert source.calls == calls  # idle: no renewal, no thread
    step(clock, 1800, by=100)  # its token has expired meanwhile: the next caller waits for a new one
    token = made.current()
    assert source.calls == calls + 1 and token.expires_on > clock.time()


def _catch(call: Any) -> Any:
    try:
        return call()
    except Exception as exc:
        return exc
