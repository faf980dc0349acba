"""redis-py connections and pools that sign in with Entra tokens and re-AUTH before expiry.

Every new connection AUTHs with (object id, current token). Azure closes a connection when the token it
authenticated with expires, unless the client sent AUTH with a fresh token, so every live connection is
re-AUTHed before that:

* a connection in use re-AUTHs itself before its next command once it is due (the owning thread holds it,
  so nothing interleaves);
* idle connections are taken out of their pools by the identity's sweeper (:class:`~.auth.EntraAuth`),
  re-AUTHed and put back;
* "due" comes from :mod:`django_azure_mi.core.policy` (3 min before expiry, jittered per connection).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final

import redis
import redis.asyncio
import redis.asyncio.retry
from django.utils.module_loading import import_string
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from .. import diagnostics, runtime
from ..core.clock import SYSTEM, Clock
from ..core.errors import scrubbed
from ..core.token import Token
from ..diagnostics import SettingError
from .auth import SSL_CLASSES, TLS_DEFAULTS, EntraAuth, EntraSettings, UsesEntra, check_transport

logger = logging.getLogger("django_azure_mi.cache")

SOCKET_TIMEOUT = 5.0  # connect and read timeout of our Redis connections where the settings give none
# Blocking commands whose last argument is their timeout (seconds; 0 blocks until data comes), as
# redis-py and kombu spell them (a set lookup per command: the hot path)
_BLOCKING_NAMES = ("BLPOP", "BRPOP", "BZPOPMIN", "BZPOPMAX", "BRPOPLPUSH", "BLMOVE")
BLOCKING: Final = frozenset(
    [n for name in _BLOCKING_NAMES for n in (name, name.lower(), name.encode(), name.lower().encode())]
)


class _Credentials(redis.CredentialProvider):
    """One connection's (username, token) for redis-py's sign-in; hides the token from reprs."""

    def __init__(self, username: str, token: Token) -> None:
        self.username, self.token = username, token

    def get_credentials(self) -> tuple[str, str]:
        return self.username, self.token.value

    async def get_credentials_async(self) -> tuple[str, str]:
        return self.get_credentials()

    def __repr__(self) -> str:
        return f"<credentials user={self.username} token={self.token!r}>"


class EntraConnectionState(UsesEntra):
    """What redis-py's sync and asyncio connections of ours share: the sign-in's bookkeeping, the re-AUTH
    schedule and the pub/sub detection; no I/O (the subclasses send and await)."""

    credential_provider: redis.CredentialProvider | None
    health_check_interval: Any  # redis-py's (a float here while a PubSub holds the connection)
    pubsub_class: type = redis.client.PubSub  # its connect callback marks a subscribed connection
    _entra_exp = 0.0
    _entra_due = float("inf")
    _entra_busy = False
    _entra_clock: Clock = SYSTEM  # the runtime's, set on connect

    def __init__(self, *args: Any, entra_settings: EntraSettings, **kwargs: Any) -> None:
        self.entra_settings = entra_settings
        super().__init__(*args, **kwargs)

    def _entra_sign_in(self, entra: EntraAuth, token: Token) -> None:
        """Before redis-py's connect: the credentials it AUTHs (or HELLOs) with (the caller removes them
        in a ``finally``)."""
        self.credential_provider = _Credentials(entra.username(token), token)

    def _entra_signed_in(self, entra: EntraAuth, token: Token, error: BaseException | None) -> None:
        """After redis-py's connect (``error``: what it raised, scrubbed): raise a refusal with its diagnosis,
        or note when this connection is due to re-AUTH."""
        if isinstance(error, AuthenticationError):
            message, failure = entra.explain(error, token)
            error = diagnostics.attach(AuthenticationError(message), failure)
        if error is not None:
            raise error
        self._entra_schedule(entra, token)
        self._entra_pubsub_interval = max(0.05, (self._entra_exp - self._entra_due) / 4)
        if self._entra_subscribed():
            self._entra_pubsub_health()
        self._entra_clock = entra.clock

    def _entra_newer(self, entra: EntraAuth, token: Token | None, now: float) -> bool:
        """Whether ``token`` is newer than this connection's; if not (refresh pending, identity outage),
        try again soon, until expiry."""
        if token is None or token.expires_on <= self._entra_exp:
            self._entra_due = min(now + entra.interval, self._entra_exp)
            return False
        return True

    def _entra_reauthed(
        self, entra: EntraAuth, token: Token, error: BaseException | None, now: float
    ) -> None:
        """After an AUTH with ``token``: a refusal is logged and retried soon; other errors are raised."""
        if isinstance(error, AuthenticationError):
            entra.reauth_failures += 1
            self._entra_due = min(now + entra.interval, self._entra_exp)
            logger.warning("%s", entra.explain(error, token)[0])
            return
        if error is not None:
            raise error
        entra.reauths += 1
        self._entra_schedule(entra, token)

    def _entra_schedule(self, entra: EntraAuth, token: Token) -> None:
        """Signed in (or re-AUTHed) with ``token``: when to re-AUTH; when a PubSub checks at the latest."""
        self._entra_exp = token.expires_on
        self._entra_due = entra.due(token)
        self._entra_health_deadline(entra.clock.time())

    # A pub/sub connection sends nothing while it listens, so it would never reach the replacement in
    # send_packed_command: redis-py's PubSub pings it (the health check, before each read) once its
    # connection's health_check_interval has passed. While a PubSub holds one of ours, that interval is at
    # most a quarter of the time between the re-AUTH due time and the token's expiry. (Set on subscribe,
    # not read per command: nothing is added to the hot path.)
    _entra_health: Any = None  # the configured interval, kept while a PubSub shortens it
    _entra_pubsub_interval = 0.0
    # A PubSub that reads often never reaches its interval (each read moves the next check): its next
    # health check is due by the re-AUTH due time at the latest (monotonic seconds, as redis-py compares).
    _entra_health_by = float("inf")
    _entra_next_health: float = 0.0

    @property
    def next_health_check(self) -> float:
        return min(self._entra_next_health, self._entra_health_by)

    @next_health_check.setter
    def next_health_check(self, value: float) -> None:
        self._entra_next_health = value

    def register_connect_callback(self, callback: Any) -> None:
        super().register_connect_callback(callback)  # type: ignore[misc]
        self._entra_pubsub_health()

    def deregister_connect_callback(self, callback: Any) -> None:
        super().deregister_connect_callback(callback)  # type: ignore[misc]
        self._entra_pubsub_health()

    def _entra_pubsub_health(self) -> None:
        if self._entra_health is None:
            self._entra_health = self.health_check_interval
        interval = self._entra_health
        if self._entra_pubsub_interval and self._entra_subscribed():
            interval = min(interval or float("inf"), self._entra_pubsub_interval)
        self.health_check_interval = interval

    def _entra_subscribed(self) -> bool:
        """Held by a redis-py PubSub (it registered its resubscribe callback on this connection). RESP2
        refuses AUTH while subscribed; under RESP3 the AUTH reply could be preceded by a published message,
        which reading the reply would swallow. So such a connection is not re-AUTHed in place but replaced:
        before its next command once due (the PubSub's health-check PING comes often enough), or by its
        owner (the Celery transport and result backend; entra_due() tells them)."""
        for ref in getattr(self, "_connect_callbacks", None) or ():
            if isinstance(getattr(ref(), "__self__", None), self.pubsub_class):
                return True
        return False

    def _entra_blocks(self, args: tuple[Any, ...]) -> bool:
        """``args`` is a blocking command (:data:`BLOCKING`) on a signed-in connection."""
        return len(args) > 2 and args[0] in BLOCKING and self._entra_due != float("inf")

    def _entra_bounded(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
        """A blocking command (after the due check) that blocks no longer than until this connection is
        due to re-AUTH: a receiver idle in BZPOPMIN or BRPOP then re-AUTHs before its next call instead of
        being closed at its token's expiry while it waits (its caller gets the empty answer of a timeout and
        blocks again). A timeout of 0 (until data comes) is left alone: its caller expects no empty answer."""
        try:
            timeout = float(args[-1])
        except (TypeError, ValueError):
            return args
        left = self._entra_due - self._entra_clock.time()
        if timeout <= 0 or timeout <= left:
            return args
        return (*args[:-1], round(max(0.05, left), 3))

    def entra_due(self, now: float | None = None) -> bool:
        """Due to re-AUTH at ``now`` (default: now on the runtime's clock)."""
        return (self._entra_clock.time() if now is None else now) >= self._entra_due

    def _entra_replace_now(self) -> bool:
        """Whether a subscribed connection that is due is replaced now: once the identity holds a newer
        token (a replacement signed in with this one would be due at once, and a replacement misses what is
        published meanwhile); until then (a refresh pending, an identity outage) it looks again soon, up to
        its token's expiry."""
        if self._entra_token_renewed():
            return True
        now = self._entra_clock.time()
        self._entra_due = min(now + self.entra.interval, self._entra_exp)
        self._entra_health_deadline(now)
        return False

    def _entra_health_deadline(self, now: float) -> None:
        """A PubSub's next health check by the re-AUTH due time (``now``: the runtime's clock), on the real
        monotonic clock redis-py compares it with."""
        self._entra_health_by = time.monotonic() + (self._entra_due - now)

    def entra_owner_due(self) -> bool:
        """For an owner that replaces a subscribed connection itself (make-before-break): due half the
        re-AUTH margin before the connection's own replacement (two of its health-check intervals), once
        the identity holds a newer token than this connection's (a replacement signed in with the same
        token would be due at once; the token is renewed before the connection's own due time)."""
        if self._entra_clock.time() < self._entra_due - 2 * self._entra_pubsub_interval:
            return False
        return self._entra_token_renewed()

    def _entra_token_renewed(self) -> bool:
        """The identity holds a newer token than the one this connection signed in with."""
        newest = self.entra.provider.expires_on
        return newest is not None and newest > self._entra_exp


class EntraConnectionMixin(EntraConnectionState):
    """Mixed into redis-py's Connection classes: AUTH with the token on connect, re-AUTH when due."""

    # redis-py 8 connects through on_connect_check_health; older versions through on_connect.
    def on_connect(self) -> None:
        if hasattr(super(), "on_connect_check_health"):
            super().on_connect()  # type: ignore[misc]  # calls our on_connect_check_health
        else:
            self._entra_connect(super().on_connect)  # type: ignore[misc]

    def on_connect_check_health(self, check_health: bool = True) -> None:
        self._entra_connect(lambda: super(EntraConnectionMixin, self).on_connect_check_health(check_health))  # type: ignore[misc]

    def _entra_connect(self, connect: Any) -> None:
        entra = self.entra  # resolved once per connect
        token = entra.token()
        self._entra_sign_in(entra, token)
        error: BaseException | None = None
        try:
            connect()
        except Exception as exc:  # redis-py's frames hold the AUTH arguments: keep none of them
            error = scrubbed(exc)
        finally:
            self.credential_provider = None
        self._entra_signed_in(entra, token, error)
        entra.ensure_sweeper()

    def disconnect(self, *args: Any, **kwargs: Any) -> None:
        self._entra_due = self._entra_health_by = float("inf")
        super().disconnect(*args, **kwargs)  # type: ignore[misc]

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        if self._entra_blocks(args):
            self._entra_if_due()
            args = self._entra_bounded(args)
        super().send_command(*args, **kwargs)  # type: ignore[misc]

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if self._entra_clock.time() >= self._entra_due and not self._entra_busy:  # the hot path: inline
            self._entra_if_due()
        super().send_packed_command(command, check_health)  # type: ignore[misc]

    def _entra_if_due(self) -> None:
        if self._entra_clock.time() >= self._entra_due and not self._entra_busy:
            if self._entra_subscribed():
                if not self._entra_replace_now():
                    return
                # Replace it in its owner's thread (see _entra_subscribed): redis-py reconnects it below,
                # signing in with the current token, and its PubSub subscribes again (its connect
                # callback), as after any reconnect.
                logger.info("Redis: replacing a pub/sub connection before its token expires")
                self.disconnect()
            else:
                self.entra_reauth()

    def entra_reauth(self) -> None:
        """AUTH again with the current token if it is newer than the one this connection used."""
        if self._entra_subscribed():
            return  # replaced instead (see _entra_subscribed)
        entra = self.entra  # resolved once per re-AUTH
        now = entra.clock.time()
        try:
            token: Token | None = entra.token()
        except RedisConnectionError:
            token = None
        if not self._entra_newer(entra, token, now):
            return
        assert token is not None
        error: BaseException | None = None
        self._entra_busy = True
        try:
            self._entra_send_auth(entra.username(token), token)
        except Exception as exc:  # redis-py's frames hold the packed AUTH command: keep none of them
            error = scrubbed(exc)
        finally:
            self._entra_busy = False
        self._entra_reauthed(entra, token, error, now)

    def _entra_send_auth(self, username: str, token: Token) -> None:
        super().send_packed_command(self.pack_command("AUTH", username, token.value), False)  # type: ignore[misc,attr-defined]
        self.read_response()  # type: ignore[attr-defined]


class EntraConnection(EntraConnectionMixin, redis.Connection):  # type: ignore[misc]
    pass


class EntraSSLConnection(EntraConnectionMixin, redis.SSLConnection):  # type: ignore[misc]
    pass


class EntraUnixDomainSocketConnection(EntraConnectionMixin, redis.UnixDomainSocketConnection):  # type: ignore[misc]
    pass


_KNOWN = {
    redis.Connection: EntraConnection,
    redis.SSLConnection: EntraSSLConnection,
    redis.UnixDomainSocketConnection: EntraUnixDomainSocketConnection,
}


def entra_connection_class(base: type) -> type:
    """``base`` (Connection, SSLConnection, UnixDomainSocketConnection, …) with the Entra mixin."""
    if issubclass(base, EntraConnectionMixin):
        return base
    return _KNOWN.get(base) or type(f"Entra{base.__name__}", (EntraConnectionMixin, base), {})


def pool_kwargs(connection_class: Any, kwargs: dict[str, Any], entra_settings: EntraSettings) -> type:
    """Our defaults in a pool's ``kwargs`` (sync or asyncio; changed in place), the TLS rule checked on the
    result; returns redis-py's connection class (imported if given as a dotted path)."""
    # Every wait bounded (docs/security.md): a server that accepts and never answers AUTH (or anything)
    # held the caller forever with redis-py < 8, which has no default. 5 s (redis-py 8's default), or
    # TIMEOUT if that is shorter. None counts as unset (kombu passes None).
    bound = min(SOCKET_TIMEOUT, runtime.get().config.timeout)
    for option in ("socket_connect_timeout", "socket_timeout"):
        if kwargs.get(option) is None:
            kwargs[option] = bound
    if isinstance(connection_class, str):
        connection_class = import_string(connection_class)
    if "retry" not in kwargs and "retry_on_error" not in kwargs:
        # A connection the server closed (token expiry, failover) is replaced transparently.
        asyncio = issubclass(connection_class, redis.asyncio.connection.AbstractConnection)
        retry = redis.asyncio.retry.Retry if asyncio else Retry
        kwargs["retry"] = retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), 3)
        kwargs["retry_on_error"] = [RedisConnectionError, RedisTimeoutError]
    if issubclass(connection_class, SSL_CLASSES):
        for option, value in TLS_DEFAULTS.items():  # verified, whatever redis-py's default
            if option not in kwargs:
                kwargs[option] = value
    check_transport(connection_class, kwargs, entra_settings, entra_settings.where)
    return connection_class  # type: ignore[no-any-return]


class EntraConnectionPool(UsesEntra, redis.ConnectionPool):
    """A redis-py ConnectionPool whose connections sign in with Entra tokens and re-AUTH before expiry."""

    def __init__(
        self, connection_class: type = redis.Connection, *, entra_settings: EntraSettings, **kwargs: Any
    ) -> None:
        connection_class = entra_connection_class(pool_kwargs(connection_class, kwargs, entra_settings))
        super().__init__(connection_class=connection_class, entra_settings=entra_settings, **kwargs)
        self.entra_settings = entra_settings

    def make_connection(self) -> Any:
        self.entra.register(self)  # the current runtime's sweeper looks after this pool's idle connections
        return super().make_connection()

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


def pool_class(configured: Any, where: str) -> type[EntraConnectionPool]:
    if configured is None:
        return EntraConnectionPool
    cls = import_string(configured) if isinstance(configured, str) else configured
    if cls is redis.ConnectionPool:
        return EntraConnectionPool
    if isinstance(cls, type) and issubclass(cls, EntraConnectionPool):
        return cls
    raise SettingError(
        "E023",
        f"{where} is {configured!r}.",
        "With a managed identity the pool must be redis.ConnectionPool or a subclass of "
        "django_azure_mi.cache.EntraConnectionPool (it re-AUTHs idle connections).",
    )
