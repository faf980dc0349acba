"""Every wait bounded: servers that accept a connection and never answer (a Redis that says nothing after
the connect, before or during AUTH; a Postgres silent after the SSLRequest) must not hold a caller beyond
the default timeouts, which derive from ``AZURE_MANAGED_IDENTITY['TIMEOUT']`` where the user set none.

Each call runs in a thread; the test fails if it is still blocked long after its bound (no wall-clock
figure is asserted: only that the call returned at all, with an error)."""

from __future__ import annotations

import threading

import pytest
from django.db import connections

from .conftest import LoopbackServer
from .test_cache import build_cache, cache_settings

TIMEOUT = 2  # AZURE_MANAGED_IDENTITY['TIMEOUT'] in these tests


def returns(call, within: float) -> BaseException | None:
    """Run ``call`` in a thread; fail if it is still running after ``within`` s; return what it raised."""
    outcome: dict = {}

    def run():
        try:
            call()
        except BaseException as exc:
            outcome["error"] = exc
        else:
            outcome["error"] = None

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(within)
    assert not thread.is_alive(), f"still waiting after {within:g}s: no bound"
    return outcome["error"]


@pytest.fixture
def silent():
    server = LoopbackServer()  # accepts, reads nothing, answers nothing
    yield server
    server.close()


@pytest.mark.parametrize("backend", ["django-redis", "builtin"])
def test_a_redis_that_never_answers_auth(backend, silent, azure_imds, settings):
    from redis.exceptions import TimeoutError as RedisTimeoutError

    settings.AZURE_MANAGED_IDENTITY = {"TIMEOUT": TIMEOUT}
    server = type("Server", (), {"url": f"redis://127.0.0.1:{silent.port}/0", "ca_file": None})
    config = cache_settings(server, backend)
    config["OPTIONS"].pop("ssl_ca_certs", None)
    config["OPTIONS"].get("CONNECTION_POOL_KWARGS", {}).pop("ssl_ca_certs", None)
    cache = build_cache(config)
    # 4 tries (redis-py's retry) of TIMEOUT each, and the backoff between them
    error = returns(lambda: cache.get("x"), within=8 * TIMEOUT + 10)
    assert isinstance(error, RedisTimeoutError) or "Timeout" in type(error).__name__, repr(error)
    assert silent.accepted, "the client never connected: nothing was tested"
    # whatever redis-py's own default (none before redis-py 8), the pool has ours: min(5 s, TIMEOUT)
    if backend == "django-redis":
        pool = cache.client.get_client().connection_pool
    else:
        pool = cache._cache._get_connection_pool(False)
    kwargs = pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (TIMEOUT, TIMEOUT)


@pytest.mark.parametrize("pool", [False, True])
def test_a_postgres_silent_after_the_ssl_request(pool, silent, azure_imds, use_databases, settings):
    from .test_postgres import needs_pool

    if pool and needs_pool.args[0]:
        pytest.skip(needs_pool.kwargs["reason"])
    settings.AZURE_MANAGED_IDENTITY = {"TIMEOUT": TIMEOUT}
    options = {"sslmode": "require"}  # loopback: the SSLRequest is sent, and never answered
    if pool:
        options["pool"] = {"min_size": 0, "max_size": 1, "timeout": 5}
    use_databases(
        default={
            "ENGINE": "django_azure_mi.backends.postgresql",
            "HOST": "127.0.0.1",
            "PORT": silent.port,
            "NAME": "app",
            "USER": "app-identity",
            "OPTIONS": options,
        }
    )
    error = returns(connections["default"].ensure_connection, within=6 * TIMEOUT + 10)
    assert error is not None
    assert silent.accepted, "the client never connected: nothing was tested"
    connections["default"].close()
