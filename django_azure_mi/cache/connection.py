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
from typing import Any

import redis
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
from .auth import TLS_DEFAULTS, EntraSettings, UsesEntra, check_transport

logger = logging.getLogger("django_azure_mi.cache")

SOCKET_TIMEOUT = 5.0  # connect and read timeout of our Redis connections where the settings give none


class _Credentials(redis.CredentialProvider):
    """One connection's (username, token) for redis-py's sign-in; hides the token from reprs."""

    def __init__(self, username: str, token: Token) -> None:
        self.username, self.token = username, token

    def get_credentials(self) -> tuple[str, str]:
        return self.username, self.token.value

    def __repr__(self) -> str:
        return f"<credentials user={self.username} token={self.token!r}>"


class EntraConnectionMixin(UsesEntra):
    """Mixed into redis-py's Connection classes: AUTH with the token on connect, re-AUTH when due."""

    credential_provider: redis.CredentialProvider | None
    _entra_exp = 0.0
    _entra_due = float("inf")
    _entra_busy = False
    _entra_clock: Clock = SYSTEM  # the runtime's, set on connect

    def __init__(self, *args: Any, entra_settings: EntraSettings, **kwargs: Any) -> None:
        self.entra_settings = entra_settings
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
        entra = self.entra  # resolved once per connect
        token = entra.token()
        self.credential_provider = _Credentials(entra.username(token), token)
        error: BaseException | None = None
        try:
            connect()
        except Exception as exc:  # redis-py's frames hold the AUTH arguments: keep none of them
            error = scrubbed(exc)
        finally:
            self.credential_provider = None
        if isinstance(error, AuthenticationError):
            message, failure = entra.explain(error, token)
            error = diagnostics.attach(AuthenticationError(message), failure)
        if error is not None:
            raise error
        self._entra_exp = token.expires_on
        self._entra_due = entra.due(token)
        self._entra_clock = entra.clock
        entra.ensure_sweeper()

    def disconnect(self, *args: Any, **kwargs: Any) -> None:
        self._entra_due = float("inf")
        super().disconnect(*args, **kwargs)  # type: ignore[misc]

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if self._entra_clock.time() >= self._entra_due and not self._entra_busy:
            self.entra_reauth()
        super().send_packed_command(command, check_health)  # type: ignore[misc]

    def entra_due(self, now: float | None = None) -> bool:
        """Due to re-AUTH at ``now`` (default: now on the runtime's clock)."""
        return (self._entra_clock.time() if now is None else now) >= self._entra_due

    def entra_reauth(self) -> None:
        """AUTH again with the current token if it is newer than the one this connection used."""
        if getattr(self, "_connect_callbacks", None):
            # A pub/sub connection (redis-py registered a resubscribe callback). RESP2 refuses AUTH while
            # subscribed; under RESP3 the AUTH reply could be preceded by a published message, which
            # reading the reply here would swallow. So it is not re-AUTHed in place: its owner replaces it
            # while it is due (the Celery transport and result backend do; entra_due() tells them), else
            # Azure closes it at expiry and redis-py reconnects and resubscribes.
            return
        entra = self.entra  # resolved once per re-AUTH
        now = entra.clock.time()
        try:
            token = entra.token()
        except RedisConnectionError:
            token = None
        if token is None or token.expires_on <= self._entra_exp:
            # No newer token yet (refresh pending, identity outage): try again soon, until expiry.
            self._entra_due = min(now + entra.interval, self._entra_exp)
            return
        error: BaseException | None = None
        self._entra_busy = True
        try:
            self._entra_send_auth(entra.username(token), token)
        except Exception as exc:  # redis-py's frames hold the packed AUTH command: keep none of them
            error = scrubbed(exc)
        finally:
            self._entra_busy = False
        if isinstance(error, AuthenticationError):
            entra.reauth_failures += 1
            self._entra_due = min(now + entra.interval, self._entra_exp)
            logger.warning("%s", entra.explain(error, token)[0])
            return
        if error is not None:
            raise error
        entra.reauths += 1
        self._entra_exp = token.expires_on
        self._entra_due = entra.due(token)

    def _entra_send_auth(self, username: str, token: Token) -> None:
        super().send_packed_command(self.pack_command("AUTH", username, token.value), False)  # type: ignore[misc,attr-defined]
        self.read_response()  # type: ignore[attr-defined]


class EntraConnection(EntraConnectionMixin, redis.Connection):
    pass


class EntraSSLConnection(EntraConnectionMixin, redis.SSLConnection):
    pass


class EntraUnixDomainSocketConnection(EntraConnectionMixin, redis.UnixDomainSocketConnection):
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


class EntraConnectionPool(UsesEntra, redis.ConnectionPool):
    """A redis-py ConnectionPool whose connections sign in with Entra tokens and re-AUTH before expiry."""

    def __init__(
        self, connection_class: type = redis.Connection, *, entra_settings: EntraSettings, **kwargs: Any
    ) -> None:
        # Every wait bounded (docs/security.md): a server that accepts and never answers AUTH (or anything)
        # held the caller forever with redis-py < 8, which has no default. 5 s (redis-py 8's default), or
        # TIMEOUT if that is shorter. None counts as unset (kombu passes None).
        bound = min(SOCKET_TIMEOUT, runtime.get().config.timeout)
        for option in ("socket_connect_timeout", "socket_timeout"):
            if kwargs.get(option) is None:
                kwargs[option] = bound
        if "retry" not in kwargs and "retry_on_error" not in kwargs:
            # A connection the server closed (token expiry, failover) is replaced transparently.
            kwargs["retry"] = Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), 3)
            kwargs["retry_on_error"] = [RedisConnectionError, RedisTimeoutError]
        if isinstance(connection_class, str):
            connection_class = import_string(connection_class)
        if issubclass(connection_class, redis.SSLConnection):
            for option, value in TLS_DEFAULTS.items():  # verified, whatever redis-py's default
                if option not in kwargs:
                    kwargs[option] = value
        check_transport(connection_class, kwargs, entra_settings, entra_settings.where)
        connection_class = entra_connection_class(connection_class)
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
