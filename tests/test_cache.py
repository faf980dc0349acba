"""Redis with Entra ID: both backends against redis-server behind an enforcer that closes connections whose
token expired (like Azure), with the real azure-identity talking to the IMDS emulator."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest
from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError

from django_azure_mi import cache as entra_cache
from django_azure_mi import get_token_provider, runtime
from django_azure_mi.testing import reset_state

from .conftest import in_child

REDIS_SCOPE = "https://redis.azure.com/.default"
REDIS_RESOURCE = "https://redis.azure.com"
BACKENDS = ["django-redis", "builtin"]


def cache_settings(server, backend: str, pool_kwargs: dict | None = None, **identity) -> dict:
    if backend == "django-redis":
        return {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": server.url,
            "OPTIONS": {
                "CONNECTION_FACTORY": "django_azure_mi.cache.EntraConnectionFactory",
                "MANAGED_IDENTITY": identity,
                "CONNECTION_POOL_KWARGS": {"ssl_ca_certs": server.ca_file, **(pool_kwargs or {})},
            },
        }
    return {
        "BACKEND": "django_azure_mi.cache.RedisCache",
        "LOCATION": server.url,
        "OPTIONS": {"MANAGED_IDENTITY": identity, "ssl_ca_certs": server.ca_file, **(pool_kwargs or {})},
    }


def open_idle_connections(cache, count: int = 4) -> None:
    """Several pooled connections (``count`` threads at once), left idle in the pool."""
    cache.set("warm", 1)
    threads = [threading.Thread(target=cache.get, args=("warm",)) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@pytest.fixture
def use_cache(azure_redis, settings):
    def configure(backend: str, pool_kwargs: dict | None = None, **identity):
        settings.CACHES = {"default": cache_settings(azure_redis, backend, pool_kwargs, **identity)}
        return caches["default"]

    return configure


@pytest.mark.parametrize("backend", BACKENDS)
def test_cache_api(use_cache, backend, azure_redis, azure_imds):
    cache = use_cache(backend)
    cache.set("a", {"x": 1}, 30)
    assert cache.get("a") == {"x": 1}
    assert cache.add("a", 2) is False
    cache.set("n", 1)
    assert cache.incr("n", 5) == 6
    cache.set_many({"b": 2, "c": 3})
    assert cache.get_many(["a", "b", "c"]) == {"a": {"x": 1}, "b": 2, "c": 3}
    assert cache.touch("b", 60) is True
    cache.delete_many(["b", "c"])
    assert cache.get("b") is None
    assert cache.delete("a") is True
    if backend == "django-redis":
        lock = cache.lock("lock-key", timeout=5)
        assert lock.acquire(blocking=False)
        assert not cache.lock("lock-key", timeout=5).acquire(blocking=False)
        lock.release()
    # AUTHed as the identity's object id (taken from the token's oid claim)
    users = {
        entry.split()[1]
        for entry in azure_redis.admin().execute_command("ACL", "LIST")
        if isinstance(entry, bytes)
        for entry in [entry.decode()]
    }
    assert azure_imds.object_id() in users
    assert azure_redis.auth_count >= 1


def _load(cache, seconds_or_event, threads: int = 8):
    """Continuous set/get/incr from ``threads`` threads; returns (ops, failures)."""
    stop = seconds_or_event
    counts = {"ops": 0, "failures": 0}
    lock = threading.Lock()
    errors: list[str] = []

    def work(i: int) -> None:
        ops = failures = 0
        while not stop.is_set():
            try:
                cache.set(f"k{i}", i)
                assert cache.get(f"k{i}") == i
                cache.incr(f"k{i}")
                ops += 3
            except Exception as exc:
                failures += 1
                errors.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.001)
        with lock:
            counts["ops"] += ops
            counts["failures"] += failures

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    return pool, counts, errors


def _wait_for_tokens(imds, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while imds.issued_count(REDIS_RESOURCE) < n:
        assert time.monotonic() < deadline, f"only {imds.issued_count(REDIS_RESOURCE)} tokens issued"
        time.sleep(0.05)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.azure_imds(ttl=6)
def test_load_across_three_rotations_no_failures_no_closures(use_cache, backend, azure_redis, azure_imds):
    cache = use_cache(backend)
    stop = threading.Event()
    threads, counts, errors = _load(cache, stop)
    _wait_for_tokens(azure_imds, 4)  # the first token and three rotations
    time.sleep(1.0)  # and a little beyond: the first token has expired by now
    stop.set()
    for t in threads:
        t.join(10)
    assert counts["failures"] == 0, errors[:5]
    assert counts["ops"] > 1000
    assert azure_redis.closed_connections == 0
    assert azure_redis.auth_count > azure_imds.issued_count(REDIS_RESOURCE)  # live connections re-AUTHed


@pytest.mark.slow
@pytest.mark.azure_imds(ttl=20)
def test_identity_outage_during_load(use_cache, azure_redis, azure_imds):
    """The endpoint fails across a scheduled refresh: ops keep working on the cached token, renewal resumes
    when it is back, and no connection outlives its token."""
    from django_azure_mi.testing.imds import Fault

    cache = use_cache("django-redis")
    stop = threading.Event()
    threads, counts, errors = _load(cache, stop)
    _wait_for_tokens(azure_imds, 2)
    issued = azure_imds.last_token(REDIS_RESOURCE)
    refresh_due = issued.issued_at + (issued.expires_on - issued.issued_at) / 2  # half-life for short tokens
    time.sleep(max(0.0, refresh_due - 2 - time.time()))
    azure_imds.fail_always(Fault.error(500))  # from 2 s before the refresh until 3 s after it
    time.sleep(5)
    failed_requests = azure_imds.request_count(REDIS_RESOURCE) - azure_imds.issued_count(REDIS_RESOURCE)
    azure_imds.clear_faults()
    _wait_for_tokens(azure_imds, 3)  # renewal resumed
    time.sleep(max(0.0, issued.expires_on + 1 - time.time()))  # past the expiry of the outage's token
    stop.set()
    for t in threads:
        t.join(10)
    assert failed_requests >= 1  # the outage was real
    assert counts["failures"] == 0, errors[:5]
    assert azure_redis.closed_connections == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.azure_imds(ttl=5)
def test_idle_connections_are_reauthed_not_closed(use_cache, backend, azure_redis, azure_imds):
    cache = use_cache(backend)
    open_idle_connections(cache)  # then none of them used for longer than a token lives
    clients = azure_redis.client_count
    time.sleep(9)
    assert azure_redis.closed_connections == 0
    assert azure_redis.client_count == clients  # the same connections, still open
    assert cache.get("warm") == 1


@pytest.mark.azure_imds(ttl=120)
def test_connection_killed_by_server_is_replaced(use_cache, azure_redis):
    cache = use_cache("django-redis")
    cache.set("k", 1)
    clients = azure_redis.client_count
    azure_redis.admin().execute_command("CLIENT", "KILL", "USER", get_token_provider_oid())
    deadline = time.monotonic() + 5  # a failover: the server dropped the connection before the next use
    while azure_redis.client_count >= clients and time.monotonic() < deadline:
        time.sleep(0.02)
    assert azure_redis.client_count < clients
    assert cache.get("k") == 1  # the dead pooled connection is replaced transparently


def test_checkout_retries_when_reconnecting_is_refused(use_cache, azure_redis):
    """The server drops a pooled connection, then refuses new clients for a moment (maxclients): the
    reconnect at checkout is outside the command's retry, but redis-py retries the connect itself with the
    pool's policy, so the read succeeds once the server takes clients again."""
    from redis.backoff import ConstantBackoff
    from redis.retry import Retry

    retry = Retry(ConstantBackoff(0.3), 3)
    cache = use_cache("django-redis", {"retry": retry, "retry_on_error": [RedisConnectionError]})
    cache.set("k", 1)
    admin = azure_redis.admin()
    rejected = int(admin.info("stats")["rejected_connections"])
    clients = azure_redis.client_count
    admin.config_set("maxclients", 1)  # only the admin connection fits
    admin.execute_command("CLIENT", "KILL", "USER", get_token_provider_oid())
    deadline = time.monotonic() + 5  # until the enforcer has closed our side too
    while azure_redis.client_count >= clients and time.monotonic() < deadline:
        time.sleep(0.02)

    def reopen_after_first_refusal():
        deadline = time.monotonic() + 10
        while int(admin.info("stats")["rejected_connections"]) == rejected and time.monotonic() < deadline:
            time.sleep(0.01)
        admin.config_set("maxclients", 10000)

    reopener = threading.Thread(target=reopen_after_first_refusal)
    reopener.start()
    try:
        assert cache.get("k") == 1
    finally:
        reopener.join()
        admin.config_set("maxclients", 10000)
    assert int(admin.info("stats")["rejected_connections"]) > rejected  # the refusal really happened


@pytest.mark.azure_imds(ttl=5)
def test_reset_leaves_no_sweeper_that_could_fetch_tokens(use_cache, azure_redis, azure_imds):
    """Between tests (or after settings change) a late sweep must not build a provider for the next
    settings: it could fetch a token before the next test's Redis accepts it (the one-off WRONGPASS seen
    in CI). reset() waits for the sweeper, and a reset EntraAuth refuses to fetch."""
    cache = use_cache("builtin")
    cache.set("k", 1)
    (auth,) = [c for c in runtime.get().components() if isinstance(c, entra_cache.EntraAuth)]
    thread = auth.sweeper._thread
    assert thread is not None and thread.is_alive()
    reset_state()
    assert not thread.is_alive()
    issued = azure_imds.issued_count()
    with pytest.raises(RedisConnectionError, match="was reset"):
        auth.token()
    assert azure_imds.issued_count() == issued


def get_token_provider_oid() -> str:
    import jwt

    token = get_token_provider(REDIS_SCOPE).get_token(REDIS_SCOPE).token
    return jwt.decode(token, options={"verify_signature": False})["oid"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_async_view_uses_the_cache(use_cache, backend, azure_redis):
    cache = use_cache(backend)

    async def view():
        await cache.aset("async-key", "v")
        value = await cache.aget("async-key")
        cache.set("sync-in-loop", 1)  # a sync call inside the running loop completes (no hang)
        return value

    assert asyncio.run(asyncio.wait_for(view(), timeout=20)) == "v"
    assert cache.get("sync-in-loop") == 1


def test_fork_then_use(use_cache, azure_redis):
    cache = use_cache("django-redis")
    cache.set("before-fork", 1)

    def child():
        cache.set("child", 2)
        return {"child": cache.get("child"), "before_fork": cache.get("before-fork")}

    assert in_child(child) == {"ok": True, "child": 2, "before_fork": 1}
    assert cache.get("child") == 2  # the parent's pool still works


@pytest.mark.parametrize("backend", BACKENDS)
def test_wrong_username_explains_wrongpass_without_token(use_cache, backend, azure_redis, caplog):
    caplog.set_level(logging.DEBUG)
    cache = use_cache(backend, USERNAME="00000000-0000-0000-0000-000000000000")
    with pytest.raises(AuthenticationError) as info:
        cache.get("x")
    message = str(info.value)
    token = get_token_provider(REDIS_SCOPE).get_token(REDIS_SCOPE).token
    assert "USERNAME" in message and "object id" in message and "access-policy-assignment" in message
    assert token not in message and token not in caplog.text


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("location", "options", "message"),
    [
        ("rediss://user:secret@cache.redis.cache.windows.net:6380/0", {}, "credentials in the URL"),
        ("redis://cache.redis.cache.windows.net:6379/0", {}, r"redis:// \(no TLS\)"),
        (
            "rediss://cache.redis.cache.windows.net:6380/0",
            {"MANAGED_IDENTITY": {"USER": "x"}},
            "unknown key 'USER'",
        ),
        (
            "rediss://cache.redis.cache.windows.net:6380/0",
            {"MANAGED_IDENTITY": {"CLIENT_ID": "x"}},
            "CLIENT_ID",
        ),
        (
            "rediss://cache.redis.cache.windows.net:6380/0",
            {"MANAGED_IDENTITY": {"SCOPE": "redis"}},
            "not a scope",
        ),
    ],
)
def test_misconfiguration_names_the_setting(azure_imds, backend, location, options, message):
    config = {"BACKEND": "django_azure_mi.cache.RedisCache", "LOCATION": location, "OPTIONS": dict(options)}
    if backend == "django-redis":
        config["BACKEND"] = "django_redis.cache.RedisCache"
        config["OPTIONS"]["CONNECTION_FACTORY"] = "django_azure_mi.cache.EntraConnectionFactory"
    with pytest.raises(ImproperlyConfigured, match=message):
        build_cache(config).get("x")


def build_cache(config: dict):
    """A cache backend built directly: broken configs never reach Django's global cache handler."""
    from django.utils.module_loading import import_string

    params = {k: v for k, v in config.items() if k not in ("BACKEND", "LOCATION")}
    return import_string(config["BACKEND"])(config["LOCATION"], params)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"PASSWORD": "access-key"}, r"\['PASSWORD'\] is set"),
        ({"CONNECTION_POOL_CLASS": "redis.BlockingConnectionPool"}, "EntraConnectionPool"),
    ],
)
def test_django_redis_options_that_conflict(azure_imds, options, message):
    config = {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": "rediss://c.redis.cache.windows.net:6380/0",
        "OPTIONS": {"CONNECTION_FACTORY": "django_azure_mi.cache.EntraConnectionFactory", **options},
    }
    with pytest.raises(ImproperlyConfigured, match=message):
        build_cache(config).get("x")


def test_redis_on_loopback_may_skip_tls(settings, azure_imds):
    entra_cache.check_location("redis://127.0.0.1:6379/0", "LOCATION")
    entra_cache.check_location("unix:///tmp/redis.sock", "LOCATION")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.azure_imds(ttl=6)
def test_no_token_in_logs(use_cache, backend, azure_redis, azure_imds, caplog):
    caplog.set_level(logging.DEBUG)
    cache = use_cache(backend)
    cache.set("k", 1)
    _wait_for_tokens(azure_imds, 2)
    cache.get("k")
    for issued in azure_imds.issued:
        assert issued.token not in caplog.text


@pytest.mark.slow
@pytest.mark.parametrize("protocol", [2, 3])
@pytest.mark.azure_imds(ttl=5)
def test_pubsub_on_an_entra_pool_survives_token_expiry(use_cache, azure_redis, protocol):
    """A subscribed connection is not re-AUTHed in place: RESP2 refuses AUTH while subscribed, and under
    RESP3 reading the AUTH reply could swallow a published message. It is replaced before its token
    expires, also while it reads all the time (its next health check is due by the re-AUTH due time):
    messages keep arriving, commands on the subscribed connection never fail, nothing is closed at
    expiry."""
    cache = use_cache("django-redis", pool_kwargs={"protocol": protocol})
    client = cache.client.get_client()
    pubsub = client.pubsub()
    pubsub.subscribe("news")
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    received = []
    deadline = time.monotonic() + 12
    n = 0
    while time.monotonic() < deadline:  # spans at least two token lifetimes
        n += 1
        client.publish("news", str(n))
        try:
            if n % 3 == 0:
                pubsub.subscribe(f"more-{n}")  # a command on the subscribed connection itself
            message = pubsub.get_message(timeout=0.5)
        except RedisConnectionError:  # the enforcer closed it at expiry: redis-py reconnects on the next call
            continue
        while message:  # drain what arrived
            if message["type"] == "message" and message["channel"] == b"news":
                received.append(int(message["data"]))
            message = pubsub.get_message(timeout=0.01)
        time.sleep(0.05)
    pubsub.close()
    assert received and received[-1] >= n - 3  # still receiving at the end
    assert n > 40
    assert azure_redis.closed_connections == 0, azure_redis.closures


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_cache_built_before_a_settings_change_keeps_working(use_cache, backend, azure_redis, settings):
    """AZURE_MANAGED_IDENTITY changes (override_settings) replace the runtime: a cache object Django built
    before must sign in through the new one, not the closed one."""
    cache = use_cache(backend)
    cache.set("k", 1)
    closed = [c for c in runtime.get().components() if isinstance(c, entra_cache.EntraAuth)]
    settings.AZURE_MANAGED_IDENTITY = {"TIMEOUT": 5}  # a new runtime; the old one's auth is closed
    assert closed and all(auth.sweeper.closed for auth in closed)
    client = cache.client.get_client() if backend == "django-redis" else cache._cache.get_client(write=True)
    client.connection_pool.disconnect()  # the next command opens (and AUTHs) a new connection
    assert cache.get("k") == 1
    (auth,) = [c for c in runtime.get().components() if isinstance(c, entra_cache.EntraAuth)]
    assert not auth.sweeper.closed and auth.sweeper._thread is not None
