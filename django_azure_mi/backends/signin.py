"""What our database ENGINEs share: connection parameters that hold no password until the one call that
connects, and that call, whose failure is scrubbed of the token and diagnosed (a mixin of each
``DatabaseWrapper``; each names its own diagnosis)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from django.utils.asyncio import async_unsafe
from django.views.decorators.debug import sensitive_variables

from .. import diagnostics
from ..core.errors import TokenUnavailableError, redact, scrubbed
from ..core.token import Token
from ..diagnostics import ServiceFailure, text_of
from ..options import Bound, ServiceBinding


@dataclass(frozen=True)
class AliasConfig(Bound):
    """The validated managed-identity settings of one ``DATABASES`` alias and what they add to its
    connections (each ENGINE's ``config.alias_config`` makes it)."""

    alias: str
    user: str
    host: str
    port: str
    binding: ServiceBinding
    tls: dict[str, Any] = field(compare=False)  # the driver's TLS arguments to add (verified off loopback)
    bounds: dict[str, Any] = field(default_factory=dict, compare=False)  # connect_timeout to add

    def token(self) -> str:
        return self.provider.get_token(self.scope).token


def token_facts(token: Token | None) -> dict[str, Any]:
    """What a refusal's diagnosis may show of the token that was refused: its audience, object id, seconds
    left and the managed identity's name (from its resource id); never the token."""
    claims = token.claims if token is not None else {}
    resource_id = str(claims.get("xms_mirid") or "")
    return {
        "aud": claims.get("aud"),
        "oid": claims.get("oid"),
        "expires_in": int(token.expires_on - time.time()) if token is not None else None,
        "name": resource_id.rstrip("/").rsplit("/", 1)[-1] or None,
    }


def refusal(
    failure: ServiceFailure, config: AliasConfig, exc: BaseException, server: str, port: int, who: str
) -> tuple[str, ServiceFailure]:
    """The message of the OperationalError raised for a refused sign-in (never the token), and the failure
    to attach to it: ``server`` (``"Postgres"``) at its host and port rejected the token for ``who``."""
    facts = ", ".join(
        f"{name}={failure.facts.get(name)}"
        for name in ("aud", "oid", "expires_in")
        if failure.facts.get(name) is not None
    )
    return diagnostics.explain(
        f"{server} at {config.host or 'localhost'}:{config.port or port} rejected the Microsoft Entra token "
        f"for {who} {config.user!r} ({config.provider.identity}; scope {config.scope}; {facts}). Server "
        f"said: {text_of(exc)}",
        failure,
    )


class TokenConnectParams(dict[str, Any]):
    """Connection parameters that sign in with a token of the alias's identity.

    The dict holds everything but the password, so that nothing that walks it (an error reporter reading
    the locals of Django's ``connect()``, the debug page) finds the token. :meth:`connect_kwargs` adds the
    token for the one call that opens the connection. Calling it returns such kwargs with the current
    token: psycopg_pool (>= 3.3) calls its ``kwargs`` for every connection it opens. ``lazy``: no token yet
    (a pool's own parameters: each connection takes one). ``keyword``: the driver's name for the
    password."""

    def __init__(
        self, params: dict[str, Any], config: Any, lazy: bool = False, keyword: str = "password"
    ) -> None:
        super().__init__(params)
        for key in ("password", "passwd"):
            self.pop(key, None)
        self.config = config
        self.keyword = keyword
        self.token: Token | None = None if lazy else config.provider.current()

    def connect_kwargs(self) -> dict[str, Any]:
        """The driver's keyword arguments, the token as the password: hand them over, never keep them."""
        assert self.token is not None
        return {**self, self.keyword: self.token.value}

    def __call__(self) -> dict[str, Any]:
        return TokenConnectParams(self, self.config, keyword=self.keyword).connect_kwargs()

    def __repr__(self) -> str:
        token = f"<token {len(self.token.value)} chars>" if self.token is not None else None
        return f"TokenConnectParams({dict(self)!r}, password={token})"

    __str__ = __repr__


class TokenSignIn:
    """A mixin of our ``DatabaseWrapper`` s: :meth:`_connect_with_token` opens a connection with the token
    and, when the server refuses, raises the driver's ``OperationalError`` with a diagnosis (the
    ``diagnose``/``refusal_message`` of the ENGINE) and nothing of the token."""

    Database: Any
    sign_in_logger: logging.Logger
    auth_kinds: frozenset[str]
    diagnose: Any  # staticmethod(the ENGINE's diagnose(error, config, token) -> ServiceFailure)
    refusal_message: Any  # staticmethod(failure, config, error) -> (message, failure)

    def token_params(
        self, params: dict[str, Any], config: AliasConfig, lazy: bool = False
    ) -> TokenConnectParams:
        """``params`` signing in with the identity's current token (``lazy``: each pooled connection takes
        its own); no token to be had is the driver's OperationalError with its diagnosis, as Django handles
        a failed connect."""
        try:
            return TokenConnectParams(params, config, lazy=lazy)
        except TokenUnavailableError as exc:
            failure = diagnostics.diagnose_identity(exc)
            assert failure is not None
            raise diagnostics.attach(self.Database.OperationalError(str(exc)), failure) from None

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        if not isinstance(conn_params, TokenConnectParams):  # a password alias, or a pool's checkout
            return super().get_new_connection(conn_params)  # type: ignore[misc]
        return self._connect_with_token(conn_params)

    @async_unsafe
    @sensitive_variables()
    def _connect_with_token(self, params: TokenConnectParams) -> Any:
        if params.token is None:  # pooled: Django checks a connection out of the pool (its own parameters)
            return super().get_new_connection(params)  # type: ignore[misc]
        connection, error = self._open(params)
        if error is None:
            return connection
        if not isinstance(error, self.Database.OperationalError):  # any other class: already scrubbed
            raise diagnostics.attach(error, self.diagnose(error, params.config, params.token))
        failure = self.diagnose(error, params.config, params.token)
        if failure.kind in self.auth_kinds:
            message, failure = self.refusal_message(failure, params.config, error)
            self.sign_in_logger.warning("%s", message)
        else:
            message = redact(str(error))
        raise diagnostics.attach(self.Database.OperationalError(message), failure) from None

    def _open(self, params: TokenConnectParams) -> tuple[Any, BaseException | None]:
        """One connect with the token as password. Whatever it raises (any class: the driver's, Django's,
        a TypeError from a bad option, a socket error) comes back cut loose from the frames that held the
        password (:func:`~django_azure_mi.core.errors.scrubbed`), to be raised outside this ``except``: an
        OperationalError as its message only, since a driver's may keep the failed connection (psycopg's
        ``pgconn``, password included)."""
        try:
            return super().get_new_connection(params.connect_kwargs()), None  # type: ignore[misc]
        except self.Database.OperationalError as exc:
            return None, self.Database.OperationalError(*exc.args)
        except BaseException as exc:
            return None, scrubbed(exc)
