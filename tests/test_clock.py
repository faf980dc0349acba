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


# ---------------------------------------------------------------------------------------------- adapters


def test_delegation_keys_are_backdated_renewed_ahead_and_fetched_once(clock):
    from datetime import datetime, timedelta, timezone

    from azure.storage.blob import UserDelegationKey

    from django_azure_mi.storage.delegation import KEY_BACKDATE, KEY_LIFETIME, DelegationKeys

    asked: list[tuple[datetime, datetime]] = []

    def request(start: datetime, expiry: datetime) -> UserDelegationKey:
        asked.append((start, expiry))
        key = UserDelegationKey()
        key.signed_start, key.signed_expiry, key.value = start.isoformat(), expiry.isoformat(), "k"
        return key

    def at(seconds: float) -> datetime:
        return datetime.fromtimestamp(clock.time() + seconds, timezone.utc)

    keys = DelegationKeys("test", 5.0, request, clock=clock)
    try:
        results: list[Any] = []
        burst = [threading.Thread(target=lambda: results.append(keys.get(at(3600)))) for _ in range(20)]
        for t in burst:
            t.start()
        for t in burst:
            t.join(5)
        assert len(asked) == 1 and len({id(r) for r in results}) == 1  # 20 callers, one request
        first = results[0]
        now = datetime.fromtimestamp(clock.time(), timezone.utc)
        assert first.start == now - KEY_BACKDATE and first.expiry == now + KEY_LIFETIME
        assert first.renew_at < first.expiry
        step(clock, first.renew_at.timestamp() - clock.time() - 60, by=3600)
        assert keys.get(at(3600)) is first and len(asked) == 1  # not due yet: no request
        step(clock, 120, by=10)
        keys.get(at(60))  # past renew_at: served at once, renewed in the background
        assert wait_for(lambda: len(asked) == 2)
        assert wait_for(lambda: keys.get(at(60)) is not first)
        # a URL that outlives the key in hand gets a new key now
        latest = keys.get(at(60))
        step(clock, timedelta(days=1).total_seconds(), by=3600)
        assert keys.get(latest.expiry - timedelta(seconds=1) + timedelta(days=1)).expiry > latest.expiry
    finally:
        keys.close()


@pytest.mark.parametrize("backend", ["django-redis", "django"])
def test_idle_redis_connections_live_through_a_token_lifetime_on_a_fake_clock(
    backend, azure_redis, azure_imds, settings
):
    """The sweeper re-AUTHs idle pooled connections before their token expires: a whole token lifetime
    (an hour) passes in about a second, and the enforcer - judging expiry on the same fake clock as the
    identity endpoint that stamped the tokens - closes nothing."""
    from django.core.cache import caches

    from django_azure_mi import runtime
    from django_azure_mi.cache.auth import EntraAuth
    from django_azure_mi.testing.clock import on_fake_clock

    from .test_cache import cache_settings, open_idle_connections

    settings.AZURE_MANAGED_IDENTITY = {"CREDENTIAL": "django_azure_mi.testing.clock.endpoint_credential"}
    with on_fake_clock(FakeClock(time.time()), azure_imds) as clock:
        settings.CACHES = {"default": cache_settings(azure_redis, backend)}
        cache = caches["default"]
        open_idle_connections(cache)
        clients = azure_redis.client_count
        (entra,) = [c for c in runtime.get().components() if isinstance(c, EntraAuth)]
        step(clock, 3600 + 120, by=10)  # past the first token's expiry, no command sent
        assert entra.reauths >= clients  # each idle connection re-AUTHed by the sweeper
        assert azure_redis.closed_connections == 0
        assert azure_redis.client_count == clients  # the same connections, still open
        assert cache.get("warm") == 1
        step(clock, 3600, by=10)  # and a second lifetime
        assert azure_redis.closed_connections == 0 and cache.get("warm") == 1
