"""Redis with Microsoft Entra ID tokens: a django-redis connection factory and a backend for Django's
built-in RedisCache.

Every new connection AUTHs with (object id, current token). Azure closes a connection when the token it
authenticated with expires, unless the client sent AUTH with a fresh token, so every live connection is
re-AUTHed before that:

* a connection in use re-AUTHs itself before its next command once it is due (the owning thread holds it,
  so nothing interleaves);
* idle connections are taken out of their pools by a per-identity sweeper, re-AUTHed and put back;
* "due" is ``REAUTH_MARGIN`` (3 min) before expiry, with per-connection jitter, capped at a quarter of the
  token's lifetime for short-lived test tokens.

This works for any number of pools per identity (Django's RedisCache makes one per thread), which redis-py's
own ``StreamingCredentialProvider`` (one ``on_next`` callback) does not. A connection the server closed
anyway is replaced transparently (retries on ConnectionError). The token core keeps serving the cached
token through identity outages, so connections keep working until their token really expires and renewal
resumes when the endpoint is back.

    CACHES = {"default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": "rediss://cache.redis.cache.windows.net:6380/0",
        "OPTIONS": {"CONNECTION_FACTORY": "django_azure_mi.cache.EntraConnectionFactory",
                    "MANAGED_IDENTITY": {"USERNAME": "<object id>"}},   # + CLIENT_ID, SCOPE
    }}
    # or "BACKEND": "django_azure_mi.cache.RedisCache" with the same "MANAGED_IDENTITY" option.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt
import redis
from django.core.cache.backends.redis import RedisCache as DjangoRedisCache
from django.utils.module_loading import import_string
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from . import conf, get_token_provider
from .conf import SettingError
from .tokens import TokenProvider, TokenUnavailableError, describe_error

logger = logging.getLogger("django_azure_mi.cache")

OPTION = "MANAGED_IDENTITY"
OPTION_KEYS = ("USERNAME", "CLIENT_ID", "SCOPE")
REAUTH_MARGIN = 180.0  # Microsoft: re-AUTH at least 3 minutes before the token expires
REAUTH_JITTER = 60.0  # spread over up to this many seconds (at most 10 % of the token's lifetime)


@dataclass(frozen=True)
class EntraSettings:
    """The validated ``OPTIONS["MANAGED_IDENTITY"]`` of one cache."""

    username: str | None  # the identity's object id; None: the token's oid claim
    client_id: str | None
    scope: str


def parse_options(raw: Any, where: str) -> EntraSettings:
    where = f"{where}['{OPTION}']"
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise SettingError(
            "E020", f"{where} must be a dict such as {{'USERNAME': '<object id of the identity>'}}."
        )
    unknown = sorted(set(raw) - set(OPTION_KEYS))
    if unknown:
        raise SettingError(
            "E020", f"{where} has unknown key {unknown[0]!r}; allowed: {', '.join(OPTION_KEYS)}."
        )
    username = raw.get("USERNAME") or None
    if username is not None and not isinstance(username, str):
        raise SettingError("E020", f"{where}['USERNAME'] must be the identity's object id (a string).")
    client_id, scope = conf.adapter_identity(raw, "redis", where, keys=("CLIENT_ID", "SCOPE"))
    return EntraSettings(username, client_id, scope)


def check_location(url: str, where: str) -> None:
    """No credentials in the URL; TLS (``rediss://``) unless the host is loopback."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        raise SettingError(
            "E021",
            f"{where} has credentials in the URL ({parts.scheme}://…@{parts.hostname}) while the "
            "cache signs in "
            "with a managed identity. Remove them: the identity's object id and token are sent instead.",
        )
    if parts.scheme == "redis" and not conf.is_loopback(parts.hostname):
        raise SettingError(
            "E022",
            f"{where} uses redis:// (no TLS) to {parts.hostname}: the access token would travel "
            "in clear text. "
            f"Use rediss://{parts.hostname}:{parts.port or 6380}/… (Azure Cache for Redis: port 6380; Azure "
            "Managed Redis: 10000).",
        )


class EntraAuth:
    """Tokens and user name for one identity/scope, and the sweeper that re-AUTHs its pools' idle
    connections. One per :class:`EntraSettings`, process-wide."""

    def __init__(self, settings: EntraSettings) -> None:
        self.settings = settings
        self._pools: weakref.WeakSet[EntraConnectionPool] = weakref.WeakSet()
        self._claims: tuple[str, dict[str, Any]] = ("", {})
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._unsubscribe: Any = None
        self.interval = 5.0  # sweep period; shortened for short-lived tokens
        self.reauths = 0  # reported by azure_check, the status page and the benchmarks
        self.reauth_failures = 0

    @property
    def provider(self) -> TokenProvider:
        return get_token_provider(self.settings.scope, client_id=self.settings.client_id)

    def token(self) -> Any:
        """The current token (AccessToken); a TokenUnavailableError becomes a redis ConnectionError, so
        redis-py cleans up and retries."""
        if self._stopped:  # reset: a late sweep or connection must not build a provider for new settings
            raise RedisConnectionError("django-azure-mi: this cache's identity was reset")
        try:
            return self.provider.get_token(self.settings.scope)
        except TokenUnavailableError as exc:
            raise RedisConnectionError(str(exc)) from None

    def claims(self, token: str) -> dict[str, Any]:
        cached_token, claims = self._claims
        if cached_token != token:
            try:
                claims = jwt.decode(token, options={"verify_signature": False})
            except jwt.PyJWTError:
                claims = {}
            self._claims = (token, claims)
        return claims

    def username(self, token: str) -> str:
        if self.settings.username:
            return self.settings.username
        oid = self.claims(token).get("oid")
        if not oid:
            raise SettingError(
                "E020",
                f"The token for {self.settings.scope} has no oid claim; "
                f"set OPTIONS['{OPTION}']['USERNAME'] to the identity's object id.",
            )
        return str(oid)

    def due(self, token: Any) -> float:
        """When a connection AUTHed with ``token`` should re-AUTH (jittered per connection)."""
        claims = self.claims(token.token)
        issued = claims.get("iat") if isinstance(claims.get("iat"), (int, float)) else time.time()
        lifetime = max(1.0, token.expires_on - issued)
        margin = min(REAUTH_MARGIN, lifetime * 0.25)
        interval = max(0.05, min(5.0, margin / 4))
        if interval < self.interval:
            self.interval = interval
            self._wake.set()  # the sweeper may be sleeping on the longer interval
        return float(token.expires_on - margin - random.uniform(0, min(REAUTH_JITTER, lifetime * 0.1)))

    def explain(self, exc: BaseException, token: Any) -> str:
        oid = self.claims(token.token).get("oid")
        username = self.username(token.token)
        mismatch = (
            f" OPTIONS['{OPTION}']['USERNAME'] is {username!r} but the token's object id is {oid!r}: "
            "they must match."
            if self.settings.username and oid and username != oid
            else ""
        )
        return (
            f"Redis refused AUTH as {username!r} with a token for {self.settings.scope} "
            f"({self.provider.identity}, oid {oid}): {describe_error(exc)}.{mismatch} USERNAME must be the "
            "identity's object id, and the cache needs a data access policy assignment for it "
            "(az redis access-policy-assignment create --object-id <oid> ...). Check the scope/cloud too."
        )

    def register(self, pool: EntraConnectionPool) -> None:
        with self._lock:
            self._pools.add(pool)
        self.ensure_sweeper()

    def ensure_sweeper(self) -> None:
        """Start the sweeper if it is not running (first pool; after fork)."""
        if self._thread is None and not self._stopped:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._sweep, name="django-azure-mi redis re-auth", daemon=True
                    )
                    self._thread.start()
                    if self._unsubscribe is None:  # a new token: look for due connections at once
                        self._unsubscribe = self.provider.subscribe(lambda info: self._wake.set())

    def _sweep(self) -> None:
        while not self._stopped:
            self._wake.wait(self.interval)
            self._wake.clear()
            now = time.time()
            for pool in list(self._pools):
                if self._stopped:
                    break
                try:
                    pool.reauth_idle(now)
                except Exception as exc:
                    logger.warning("redis re-AUTH sweep failed: %s", describe_error(exc))

    def stop(self) -> None:
        """Stop the sweeper and wait (briefly) for a sweep in progress to finish."""
        self._stopped = True
        self._wake.set()
        if self._unsubscribe is not None:
            self._unsubscribe()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)


_auths: dict[EntraSettings, EntraAuth] = {}
_auths_lock = threading.Lock()


def get_auth(settings: EntraSettings) -> EntraAuth:
    with _auths_lock:
        auth = _auths.get(settings)
        if auth is None:
            auth = _auths[settings] = EntraAuth(settings)
        return auth


def reset() -> None:
    """Stop every sweeper, close the factory's pools and forget them (tests)."""
    with _auths_lock:
        auths = list(_auths.values())
        _auths.clear()
    for auth in auths:
        auth.stop()
    pools = list(EntraConnectionFactory._pools.values())
    EntraConnectionFactory._pools.clear()
    for pool in pools:
        pool.disconnect()


def _after_fork_in_child() -> None:
    global _auths_lock
    _auths_lock = threading.Lock()
    for auth in _auths.values():
        auth._lock = threading.Lock()
        auth._thread = None  # restarted by the next pool that registers or reconnects
        auth._wake = threading.Event()


os.register_at_fork(after_in_child=_after_fork_in_child)


class _Credentials(redis.CredentialProvider):
    """One connection's (username, token); hides the token from reprs."""

    def __init__(self, username: str, token: str) -> None:
        self._credentials = (username, token)

    def get_credentials(self) -> tuple[str, str]:
        return self._credentials

    def __repr__(self) -> str:
        return f"<credentials user={self._credentials[0]} token=<{len(self._credentials[1])} chars>>"


class EntraConnectionMixin:
    """Mixed into redis-py's Connection classes: AUTH with the token on connect, re-AUTH when due."""

    entra: EntraAuth
    _entra_exp = 0.0
    _entra_due = float("inf")
    _entra_busy = False

    def __init__(self, *args: Any, entra: EntraAuth, **kwargs: Any) -> None:
        self.entra = entra
        super().__init__(*args, **kwargs)

    # redis-py 8 connects through on_connect_check_health; older versions through on_connect.
    def on_connect(self) -> None:
        if hasattr(super(), "on_connect_check_health"):
            super().on_connect()  # type: ignore[misc]  # calls our on_connect_check_health
        else:
            self._entra_connect(super().on_connect)  # type: ignore[misc]

    def on_connect_check_health(self, check_health: bool = True) -> None:
        self._entra_connect(lambda: super(EntraConnectionMixin, self).on_connect_check_health(check_health))  # type: ignore[misc]

    def _entra_connect(self, connect: Any) -> None:
        token = self.entra.token()
        credentials = _Credentials(self.entra.username(token.token), token.token)
        self.credential_provider: _Credentials | None = credentials
        try:
            connect()
        except AuthenticationError as exc:
            raise AuthenticationError(self.entra.explain(exc, token)) from None
        finally:
            self.credential_provider = None
        self._entra_exp = token.expires_on
        self._entra_due = self.entra.due(token)
        self.entra.ensure_sweeper()

    def disconnect(self, *args: Any, **kwargs: Any) -> None:
        self._entra_due = float("inf")
        super().disconnect(*args, **kwargs)  # type: ignore[misc]

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if time.time() >= self._entra_due and not self._entra_busy:
            self.entra_reauth()
        super().send_packed_command(command, check_health)  # type: ignore[misc]

    def entra_due(self, now: float) -> bool:
        return now >= self._entra_due

    def entra_reauth(self) -> None:
        """AUTH again with the current token if it is newer than the one this connection used."""
        if getattr(self, "_connect_callbacks", None) and str(getattr(self, "protocol", 2)) != "3":
            # A RESP2 pub/sub connection (redis-py registered a resubscribe callback): Redis refuses AUTH
            # while subscribed. Azure closes it at expiry; redis-py reconnects with a fresh token and
            # resubscribes. (RESP3 allows AUTH while subscribed: those re-AUTH like any other.)
            self._entra_due = float("inf")
            return
        now = time.time()
        try:
            token = self.entra.token()
        except RedisConnectionError:
            token = None
        if token is None or token.expires_on <= self._entra_exp:
            # No newer token yet (refresh pending, identity outage): try again soon, until expiry.
            self._entra_due = min(now + self.entra.interval, self._entra_exp)
            return
        username = self.entra.username(token.token)
        self._entra_busy = True
        try:
            auth = self.pack_command("AUTH", username, token.token)  # type: ignore[attr-defined]
            super().send_packed_command(auth, False)  # type: ignore[misc]
            self.read_response()  # type: ignore[attr-defined]
        except AuthenticationError as exc:
            self.entra.reauth_failures += 1
            self._entra_due = min(now + self.entra.interval, self._entra_exp)
            logger.warning("%s", self.entra.explain(exc, token))
            return
        finally:
            self._entra_busy = False
        self.entra.reauths += 1
        self._entra_exp = token.expires_on
        self._entra_due = self.entra.due(token)


_classes: dict[type, type] = {}


def entra_connection_class(base: type) -> type:
    """``base`` (Connection, SSLConnection, UnixDomainSocketConnection, …) with the Entra mixin."""
    if issubclass(base, EntraConnectionMixin):
        return base
    cls = _classes.get(base)
    if cls is None:
        cls = _classes[base] = type(f"Entra{base.__name__}", (EntraConnectionMixin, base), {})
    return cls


class EntraConnectionPool(redis.ConnectionPool):
    """A redis-py ConnectionPool whose connections sign in with Entra tokens and re-AUTH before expiry."""

    def __init__(self, connection_class: type = redis.Connection, *, entra: EntraAuth, **kwargs: Any) -> None:
        if "retry" not in kwargs and "retry_on_error" not in kwargs:
            # A connection the server closed (token expiry, failover) is replaced transparently.
            kwargs["retry"] = Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), 3)
            kwargs["retry_on_error"] = [RedisConnectionError, RedisTimeoutError]
        super().__init__(connection_class=entra_connection_class(connection_class), entra=entra, **kwargs)
        self.entra = entra
        entra.register(self)

    def reauth_idle(self, now: float) -> None:
        """Take the idle connections that are due out of the pool, re-AUTH them, put them back."""
        self._checkpid()
        with self._lock:
            due = [c for c in self._available_connections if c.entra_due(now)]
            for conn in due:
                self._available_connections.remove(conn)
                self._in_use_connections.add(conn)
        for conn in due:
            try:
                conn.entra_reauth()
            except Exception:
                conn.disconnect()  # broken: the next user reconnects with a fresh token
            finally:
                self.release(conn)


def _pool_class(configured: Any, where: str) -> type[EntraConnectionPool]:
    if configured is None:
        return EntraConnectionPool
    cls = import_string(configured) if isinstance(configured, str) else configured
    if cls is redis.ConnectionPool:
        return EntraConnectionPool
    if isinstance(cls, type) and issubclass(cls, EntraConnectionPool):
        return cls
    raise SettingError(
        "E023",
        f"{where} is {configured!r}; with a managed identity the pool must be "
        "redis.ConnectionPool or a subclass "
        "of django_azure_mi.cache.EntraConnectionPool (it re-AUTHs idle connections).",
    )


# ---------------------------------------------------------------------- django-redis

try:
    from django_redis.pool import ConnectionFactory as _DjangoRedisFactory
except ImportError:  # pragma: no cover - django-redis is optional
    _DjangoRedisFactory = object


class EntraConnectionFactory(_DjangoRedisFactory):  # type: ignore[misc]
    """django-redis ``CONNECTION_FACTORY``: pools of Entra-authenticated connections."""

    _pools: dict[Any, Any] = {}  # ours, apart from django-redis's (keyed by URL only)

    def __init__(self, options: dict[str, Any]) -> None:
        if _DjangoRedisFactory is object:
            raise SettingError(
                "E025", "EntraConnectionFactory needs django-redis: pip install 'django-azure-mi[redis]'"
            )
        where = "CACHES[…]['OPTIONS']"
        for key in ("PASSWORD", "USERNAME"):
            if options.get(key):
                raise SettingError(
                    "E021",
                    f"{where}['{key}'] is set while the cache signs in with a managed identity. "
                    "Remove it; put the "
                    f"identity's object id in {where}['{OPTION}']['USERNAME'] if needed.",
                )
        super().__init__(options)
        self.pool_cls = _pool_class(options.get("CONNECTION_POOL_CLASS"), f"{where}['CONNECTION_POOL_CLASS']")
        self.entra = get_auth(parse_options(options.get(OPTION), where))

    def make_connection_params(self, url: str) -> dict[str, Any]:
        check_location(url, "CACHES[…]['LOCATION']")
        params: dict[str, Any] = super().make_connection_params(url)
        params["entra"] = self.entra
        return params

    def get_or_create_connection_pool(self, params: dict[str, Any]) -> Any:
        key = (params["url"], self.entra.settings)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = self.get_connection_pool(params)
        return pool

    def get_connection_pool(self, params: dict[str, Any]) -> Any:
        return self.pool_cls.from_url(**{**params, **self.pool_cls_kwargs})


# ---------------------------------------------------------------------- Django's built-in backend


class RedisCache(DjangoRedisCache):
    """Django's ``django.core.cache.backends.redis.RedisCache`` signing in with Entra tokens."""

    def __init__(self, server: str, params: dict[str, Any]) -> None:
        options = dict(params.get("OPTIONS") or {})
        where = "CACHES[…]['OPTIONS']"
        settings = parse_options(options.pop(OPTION, None), where)
        options["pool_class"] = _pool_class(options.get("pool_class"), f"{where}['pool_class']")
        options["entra"] = get_auth(settings)
        super().__init__(server, {**params, "OPTIONS": options})
        for url in self._servers:  # type: ignore[attr-defined]
            check_location(url, "CACHES[…]['LOCATION']")
