"""Django's PostgreSQL backend, signing in with a Microsoft Entra ID token instead of a password.

Every new physical connection gets the current token (from the process-wide token core) as its password:
plain connections (``CONN_MAX_AGE = 0``), persistent ones, and Django's psycopg pool (``OPTIONS["pool"]``),
where the parameters handed to the pool are callable so psycopg_pool (>= 3.3) asks for a fresh token for
every connection it opens, including those recycled by ``max_lifetime``. The token is never written into
``settings_dict``. Postgres checks the token only at login, so live sessions outlive it.

Per alias, ``OPTIONS["managed_identity"] = {"client_id": ..., "scope": ..., "enabled": True}``;
``"enabled": False`` turns the alias back into a plain password backend (local development).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import jwt
from django.db.backends.postgresql import base as postgresql
from django.db.backends.postgresql.psycopg_any import is_psycopg3
from django.utils.asyncio import async_unsafe
from django.views.decorators.debug import sensitive_variables

from ... import conf, get_token_provider
from ...conf import SettingError
from ...tokens import TokenProvider, TokenUnavailableError, redact
from .client import DatabaseClient

logger = logging.getLogger("django_azure_mi.postgres")

OPTION = "managed_identity"
OPTION_KEYS = ("client_id", "scope", "enabled")
INSECURE_SSLMODES = ("disable", "allow", "prefer")
MIN_POOL_VERSION = (3, 3)


@dataclass(frozen=True)
class ManagedIdentity:
    """The validated managed-identity settings of one alias."""

    alias: str
    user: str
    host: str
    port: str
    client_id: str | None
    scope: str

    @property
    def provider(self) -> TokenProvider:
        return get_token_provider(self.scope, client_id=self.client_id)


def managed_identity(settings_dict: dict[str, Any], alias: str) -> ManagedIdentity | None:
    """Validate ``settings_dict`` for token sign-in; None when ``OPTIONS["managed_identity"]["enabled"]`` is
    False. Raises ImproperlyConfigured naming the setting and the fix."""
    where = f"DATABASES[{alias!r}]"
    options = settings_dict.get("OPTIONS") or {}
    raw = options.get(OPTION)
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise SettingError(
            "E010",
            f"{where}['OPTIONS']['{OPTION}'] must be a dict such as "
            "{'client_id': '<client id of a user-assigned identity>', 'enabled': True}.",
        )
    unknown = sorted(set(raw) - set(OPTION_KEYS))
    if unknown:
        raise SettingError(
            "E010",
            f"{where}['OPTIONS']['{OPTION}'] has unknown key {unknown[0]!r}; "
            f"allowed: {', '.join(OPTION_KEYS)}.",
        )
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise SettingError("E010", f"{where}['OPTIONS']['{OPTION}']['enabled'] must be True or False.")
    if not enabled:
        return None
    if settings_dict.get("PASSWORD"):
        raise SettingError(
            "E011",
            f"{where}['PASSWORD'] is set, but this database signs in with a managed identity token. "
            f"Remove PASSWORD (no secrets in settings), or set {where}['OPTIONS']['{OPTION}'] = "
            "{'enabled': False} to use the password instead (local development).",
        )
    user = settings_dict.get("USER")
    if not user:
        raise SettingError(
            "E012",
            f"{where}['USER'] is empty. With a managed identity, USER is the identity's Postgres role: the "
            "name it was created with by pgaadauth_create_principal (usually the managed identity's name; "
            "case-sensitive).",
        )
    host = settings_dict.get("HOST") or ""
    sslmode = options.get("sslmode")
    if sslmode in INSECURE_SSLMODES and not conf.is_loopback(host):
        raise SettingError(
            "E013",
            f"{where}['OPTIONS']['sslmode'] = {sslmode!r} may send the access token unencrypted to {host}. "
            "Remove it (this backend defaults to 'require' off loopback) or use 'verify-full' with "
            "'sslrootcert'.",
        )
    client_id, scope = conf.adapter_identity(raw, "postgres", f"{where}['OPTIONS']['{OPTION}']")
    return ManagedIdentity(alias, user, host, str(settings_dict.get("PORT") or ""), client_id, scope)


class TokenConnectParams(dict[str, Any]):
    """Connection parameters whose password is the current token.

    Calling it returns a copy with a fresh token: psycopg_pool (>= 3.3) calls its ``kwargs`` for every
    connection it opens. The repr hides the password (Django's debug page prints locals)."""

    def __init__(self, params: dict[str, Any], identity: ManagedIdentity) -> None:
        super().__init__(params)
        self.identity = identity
        self["password"] = identity.provider.get_token(identity.scope).token

    def __call__(self) -> TokenConnectParams:
        return TokenConnectParams(self, self.identity)

    def __repr__(self) -> str:
        shown = {k: (f"<token {len(v)} chars>" if k == "password" else v) for k, v in self.items()}
        return f"TokenConnectParams({shown!r})"

    __str__ = __repr__


class DatabaseWrapper(postgresql.DatabaseWrapper):
    client_class = DatabaseClient

    _pool_params: tuple[object, dict[str, Any]] | None = None

    def get_connection_params(self) -> dict[str, Any]:
        pool = getattr(self, "_connection_pools", {}).get(self.alias)  # Django >= 5.1
        if pool is not None:
            # Django rebuilds the parameters on every checkout and the pool ignores them (it has its own,
            # callable ones): build them once per pool.
            if self._pool_params is None or self._pool_params[0] is not pool:
                self._pool_params = (pool, self._plain_params())
            return self._pool_params[1]
        params = self._plain_params()
        identity = managed_identity(self.settings_dict, self.alias)
        if identity is None:
            return params
        if "sslmode" not in params and not conf.is_loopback(identity.host):
            params["sslmode"] = "require"
        if is_psycopg3 and self.settings_dict["OPTIONS"].get("pool"):
            _check_pool_version(self.alias)
        try:
            return TokenConnectParams(params, identity)
        except TokenUnavailableError as exc:  # Django handles connect failures as OperationalError
            raise self.Database.OperationalError(str(exc)) from None

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
    def _connect_with_token(self, conn_params: TokenConnectParams) -> Any:
        try:
            params = conn_params()
        except TokenUnavailableError as exc:
            raise self.Database.OperationalError(str(exc)) from None
        try:
            return super().get_new_connection(params)
        except self.Database.OperationalError as exc:
            error = exc
        if is_auth_failure(error):
            retry = conn_params()
            if retry["password"] != params["password"]:  # the token rotated meanwhile: one more try
                logger.info("postgres sign-in retried with the newer token: alias=%s", self.alias)
                try:
                    return super().get_new_connection(retry)
                except self.Database.OperationalError as exc:
                    error, params = exc, retry
        if is_auth_failure(error):
            message = explain_auth_failure(error, params.identity, params["password"])
            logger.warning("%s", message)
        else:
            message = redact(str(error))
        # A new exception without the original's traceback: psycopg's frames hold the password in locals.
        raise self.Database.OperationalError(message) from None


_AUTH_ERRORS = ("password authentication failed", "access token", "no password supplied")
_NO_ROLE = re.compile(r'role "[^"]*" does not exist')


def is_auth_failure(exc: BaseException) -> bool:
    """Did Postgres refuse the credentials (as opposed to being unreachable, or a missing database)?"""
    text = str(exc).lower()
    return any(needle in text for needle in _AUTH_ERRORS) or bool(_NO_ROLE.search(text))


def explain_auth_failure(exc: BaseException, identity: ManagedIdentity, token: str) -> str:
    """What went wrong signing in with ``token``, and what to check - without the token."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        claims = {}
    expires_in = int(claims["exp"] - time.time()) if isinstance(claims.get("exp"), (int, float)) else None
    facts = ", ".join(
        f"{name}={value}"
        for name, value in (
            ("aud", claims.get("aud")),
            ("oid", claims.get("oid")),
            ("expires_in", expires_in),
        )
        if value is not None
    )
    server = redact(" ".join(str(exc).split()))
    where = f"DATABASES[{identity.alias!r}]"
    if _NO_ROLE.search(server.lower()):
        create = f"pgaadauth_create_principal('{identity.user}', false, false)"
        hint = (
            f"The role does not exist: {where}['USER'] must be the identity's Postgres role exactly as "
            f"created with {create} (case-sensitive; usually the managed identity's name)."
        )
    elif "expired" in server:
        hint = "The token expired before Postgres checked it: check the machine's clock."
    else:
        hint = (
            f"Check that {where}['USER'] is the Postgres role of this identity (created with "
            "pgaadauth_create_principal, case-sensitive), that the server has Microsoft Entra authentication "
            "enabled, that the scope matches the server's cloud (AZURE_MANAGED_IDENTITY['CLOUD'] or "
            f"{where}['OPTIONS']['{OPTION}']['scope']), and that a read replica has the same principal."
        )
    return (
        f"Postgres at {identity.host or 'localhost'}:{identity.port or 5432} rejected the Microsoft Entra "
        f"token for role {identity.user!r} ({identity.provider.identity}; scope {identity.scope}; {facts}). "
        f"Server said: {server} {hint}"
    )


def _check_pool_version(alias: str) -> None:
    try:
        from psycopg_pool import __version__ as version
    except ImportError:
        return  # Django reports the missing package itself
    found = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if found < MIN_POOL_VERSION:
        raise SettingError(
            "E014",
            f"DATABASES[{alias!r}]['OPTIONS']['pool'] with a managed identity needs psycopg-pool >= 3.3 "
            f"(found {version}) so that every new pooled connection gets a fresh token: "
            "pip install 'psycopg-pool>=3.3'.",
        )
