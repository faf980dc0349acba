"""Django's PostgreSQL backend, signing in with a Microsoft Entra ID token instead of a password.

Every new physical connection gets the current token (from the process-wide token core) as its password:
plain connections (``CONN_MAX_AGE = 0``), persistent ones, and Django's psycopg pool (``OPTIONS["pool"]``),
where the parameters handed to the pool are callable so psycopg_pool (>= 3.3) asks for a fresh token for
every connection it opens, including those recycled by ``max_lifetime``. The token is never written into
``settings_dict``. Postgres checks the token only at login, so live sessions outlive it.

Per alias, ``OPTIONS["managed_identity"] = {"client_id": ..., "scope": ..., "enabled": True}``;
``"enabled": False`` turns the alias back into a plain password backend (local development). The alias's
settings are validated once per connection wrapper; each new connection takes the token once.
"""

from __future__ import annotations

import logging
from functools import cached_property
from typing import Any

from django.db.backends.base.base import NO_DB_ALIAS
from django.db.backends.postgresql import base as postgresql
from django.db.backends.postgresql.psycopg_any import is_psycopg3
from django.utils.asyncio import async_unsafe
from django.views.decorators.debug import sensitive_variables

from ... import diagnostics
from ...core.errors import TokenUnavailableError, redact, scrubbed
from ...core.token import Token
from .client import DatabaseClient
from .config import OPTION, AliasConfig, alias_config
from .diagnosis import AUTH_KINDS, diagnose, refusal_message

logger = logging.getLogger("django_azure_mi.postgres")


class TokenConnectParams(dict[str, Any]):
    """Connection parameters that sign in with a token of the alias's identity.

    The dict holds everything but the password, so that nothing that walks it (an error reporter reading
    the locals of Django's ``connect()``, the debug page) finds the token. :meth:`connect_kwargs` adds the
    token for the one call that opens the connection. Calling it returns such kwargs with the current
    token: psycopg_pool (>= 3.3) calls its ``kwargs`` for every connection it opens. ``lazy``: no token yet
    (the pool's own parameters: each connection takes one)."""

    def __init__(self, params: dict[str, Any], config: AliasConfig, lazy: bool = False) -> None:
        super().__init__(params)
        self.pop("password", None)
        self.config = config
        self.token: Token | None = None if lazy else config.provider.current()

    def connect_kwargs(self) -> dict[str, Any]:
        """The driver's keyword arguments, the token as the password: hand them over, never keep them."""
        assert self.token is not None
        return {**self, "password": self.token.value}

    def __call__(self) -> dict[str, Any]:
        return TokenConnectParams(self, self.config).connect_kwargs()

    def __repr__(self) -> str:
        token = f"<token {len(self.token.value)} chars>" if self.token is not None else None
        return f"TokenConnectParams({dict(self)!r}, password={token})"

    __str__ = __repr__


class DatabaseWrapper(postgresql.DatabaseWrapper):
    client_class = DatabaseClient

    _pool_params: tuple[object, dict[str, Any]] | None = None

    @cached_property
    def alias_config(self) -> AliasConfig | None:
        """This alias's validated managed-identity settings (None: a password alias); validated once."""
        return alias_config(self.settings_dict, self.alias)

    @property
    def _pooled(self) -> bool:
        """Whether this wrapper's connections come from Django's pool, decided from its own settings as
        Django's ``pool`` property does: a ``copy()`` with ``OPTIONS["pool"] = False`` (Django's
        ``no_pool_connection()``, test database clones) and ``_nodb_cursor()`` share the alias, or the
        pool's settings, but not the pool."""
        return bool(self.settings_dict["OPTIONS"].get("pool")) and is_psycopg3 and self.alias != NO_DB_ALIAS

    def get_connection_params(self) -> dict[str, Any]:
        pooled = self._pooled
        pools = self._connection_pools  # type: ignore[attr-defined]  # not in django-stubs yet
        pool = pools.get(self.alias) if pooled else None
        if pool is not None:
            # Django rebuilds the parameters on every checkout and the pool ignores them (it has its own,
            # callable ones): build them once per pool.
            if self._pool_params is None or self._pool_params[0] is not pool:
                self._pool_params = (pool, self._plain_params())
            return self._pool_params[1]
        params = self._plain_params()
        config = self.alias_config
        if config is None:
            return params
        params.update(config.tls)  # verify-full with the OS trust store off loopback, unless set
        params.update(config.bounds)  # connect_timeout, unless set
        try:  # the token this connection signs in with (pooled: each connection the pool opens takes one)
            return TokenConnectParams(params, config, lazy=pooled)
        except TokenUnavailableError as exc:  # Django handles connect failures as OperationalError
            failure = diagnostics.diagnose_identity(exc)
            assert failure is not None
            raise diagnostics.attach(self.Database.OperationalError(str(exc)), failure) from None

    def _plain_params(self) -> dict[str, Any]:
        params: dict[str, Any] = super().get_connection_params()
        params.pop(OPTION, None)
        return params

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        if not isinstance(conn_params, TokenConnectParams):  # password alias, or a checkout from our pool
            return super().get_new_connection(conn_params)
        return self._connect_with_token(conn_params)

    @async_unsafe
    @sensitive_variables()
    def _connect_with_token(self, params: TokenConnectParams) -> Any:
        if params.token is None:  # pooled: Django checks a connection out of the pool (its own parameters)
            return super().get_new_connection(params)
        connection, error = self._open(params)
        if error is None:
            return connection
        if not isinstance(error, self.Database.OperationalError):  # any other class: already scrubbed
            raise diagnostics.attach(error, diagnose(error, params.config, params.token))
        failure = diagnose(error, params.config, params.token)
        if failure.kind in AUTH_KINDS:
            message, failure = refusal_message(failure, params.config, error)
            logger.warning("%s", message)
        else:
            message = redact(str(error))
        raise diagnostics.attach(self.Database.OperationalError(message), failure) from None

    def _open(self, params: TokenConnectParams) -> tuple[Any, BaseException | None]:
        """One connect with the token as password. Whatever it raises (any class: the driver's, Django's,
        a TypeError from a bad option, a socket error) comes back cut loose from the frames that held the
        password (:func:`~django_azure_mi.core.errors.scrubbed`), to be raised outside this ``except``: an
        OperationalError as its message only, since psycopg's keeps the failed connection (``pgconn``,
        password included)."""
        try:
            return super().get_new_connection(params.connect_kwargs()), None
        except self.Database.OperationalError as exc:
            return None, self.Database.OperationalError(str(exc))
        except BaseException as exc:
            return None, scrubbed(exc)
