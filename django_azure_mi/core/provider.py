"""``TokenProvider``: cached, single-flight, background-refreshed tokens for one scope of one identity.

What it adds to azure-identity (docs/azure-behaviour.md §3), all through the one
:class:`~.refresher.Refresher`:

* **single-flight** - only the refresher's worker talks to the identity endpoint, so N callers on a cold
  provider cause one request, and there is never more than one request in flight per scope;
* **background refresh** - the token is renewed ``refresh_margin`` seconds before expiry (or at its
  ``refresh_on`` if earlier, never in the first half of its life) with jitter; callers keep getting the
  cached token meanwhile and never wait for the endpoint while a valid token is cached;
* **stale-while-valid** - failures are retried with capped exponential backoff + jitter, and the cached token
  is served until it is about to expire; after that callers get :class:`TokenUnavailableError` naming scope,
  identity and the last upstream error (never the token);
* **fork safety** - the child gets new locks and a new worker (gunicorn ``--preload``);
* an optional **per-host file cache** (``TOKEN_CACHE_DIR``) so N cold processes make one request per scope.

A provider is itself an azure-core ``TokenCredential`` (``get_token``/``get_token_info``), so it can be
handed to any Azure SDK client; asking it for another scope routes to the sibling provider of the same
identity.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from azure.core.credentials import AccessToken, AccessTokenInfo, TokenCredential, TokenRequestOptions

from . import policy
from .clock import SYSTEM, Clock
from .errors import ScopeRefusedError, TokenUnavailableError, describe_error, install_log_redaction
from .filecache import FileCache
from .refresher import Defer, Idleness, NotReady, Refresher
from .token import Token, checked

logger = logging.getLogger("django_azure_mi.tokens")

_WHY = {
    "closed": "the token provider was closed",
    "failed": "the identity endpoint did not return a token",
    "backoff": "the identity endpoint is failing; next retry in {retry_in:.1f}s",
    "timeout": "no token within {timeout:g}s (TIMEOUT)",
}


class TokenProvider:
    """Usually obtained from :func:`django_azure_mi.get_token_provider`; construct directly to wrap any
    ``TokenCredential``. Thread-safe; fork-safe; a ``TokenCredential`` itself."""

    def __init__(
        self,
        credential: TokenCredential | None,
        scope: str,
        *,
        identity: str = "credential",
        source: str = "imds",
        refresh_margin: float = 300.0,
        timeout: float = 15.0,
        cache_dir: str | None = None,
        retry_base: float = 1.0,
        retry_cap: float = 60.0,
        credential_factory: Callable[[], TokenCredential] | None = None,
        siblings: Callable[[str], TokenProvider] | None = None,
        idle_lifetimes: float = 0.0,
        clock: Clock = SYSTEM,
    ) -> None:
        if not isinstance(scope, str) or not scope:
            raise ValueError("scope must be a non-empty string, e.g. 'https://storage.azure.com/.default'")
        self.scope, self.identity, self.source, self._scopes = scope, identity, source, (scope,)
        self.clock = clock
        self._upstream = Upstream(credential, credential_factory, scope, source, refresh_margin, clock)
        self._refresh_margin, self._timeout = float(refresh_margin), float(timeout)
        self._file = FileCache(cache_dir, f"{identity}\0{scope}", clock) if cache_dir else None
        self._siblings = siblings  # the runtime's lookup of this identity's provider for another scope
        self._hits = 0  # approximate under heavy contention
        self._refresher: Refresher[Token] = Refresher(
            "token",
            self._acquire,
            label=f"scope={scope} identity={identity}",
            schedule=lambda token: token.refresh_due - policy.jitter(token.expires_on, token.acquired_at),
            usable_until=lambda token: token.usable_until,
            describe=lambda token: _describe(token, clock.time()),
            retry_base=retry_base,
            retry_cap=retry_cap,
            on_fork=self._upstream.after_fork,
            idleness=_idleness(self, idle_lifetimes),
            clock=clock,
        )

    # ------------------------------------------------------------------ TokenCredential API (hot path)

    def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        """The cached token (an ``azure.core`` ``AccessToken``). ``tenant_id``/``enable_cae`` are ignored:
        managed identities have one tenant and no CAE."""
        if scopes != self._scopes:
            return self._for_scopes(scopes).get_token(*scopes, claims=claims)
        return (self._claims_challenge(claims) if claims else self.current()).access

    def get_token_info(self, *scopes: str, options: TokenRequestOptions | None = None) -> AccessTokenInfo:
        """Like :meth:`get_token`, returning ``AccessTokenInfo`` (with ``refresh_on``)."""
        if scopes != self._scopes:
            return self._for_scopes(scopes).get_token_info(*scopes, options=options)
        claims = options.get("claims") if options else None
        return (self._claims_challenge(claims) if claims else self.current()).info

    async def get_token_async(self, *scopes: str, claims: str | None = None) -> AccessToken:
        """Async: returns at once when cached, otherwise waits on the loop, not in it."""
        return await AsyncTokenProvider(self).get_token(*scopes, claims=claims)

    def current(self) -> Token:
        """The hot path: the cached :class:`Token`, poking the worker when a refresh is due; else wait."""
        refresher = self._refresher
        token = refresher.value
        now = self.clock.time()
        if token is not None and now < token.usable_until:
            self._hits += 1
            if now >= refresher.poke_after:
                refresher.poke()
            return token
        try:
            return refresher.get(self._timeout)
        except NotReady as exc:
            why = _WHY[exc.reason].format(retry_in=exc.retry_in, timeout=self._timeout)
            raise self._unavailable(why) from None

    async def current_async(self) -> Token:
        """:meth:`current` for a coroutine (:meth:`AsyncTokenProvider.current`)."""
        return await AsyncTokenProvider(self).current()

    def as_async(self) -> AsyncTokenProvider:
        """This provider as an ``azure.core`` ``AsyncTokenCredential`` (for ``.aio`` SDK clients)."""
        return AsyncTokenProvider(self)

    # ------------------------------------------------------------------ public extras

    @property
    def stats(self) -> dict[str, int]:
        """Counters: hits (served from memory), waits (callers that waited for a token), requests
        (upstream calls), failures (failed upstream calls), file_hits, acquired (new tokens installed)."""
        r = self._refresher
        return {
            "hits": self._hits,
            "waits": r.waits,
            "requests": self._upstream.requests,
            "failures": r.failed,
            "file_hits": self._file.hits if self._file else 0,
            "acquired": r.acquired,
        }

    @property
    def expires_on(self) -> float | None:
        """Expiry (epoch seconds) of the cached token, or None."""
        return getattr(self._refresher.value, "expires_on", None)

    @property
    def file_cache_problem(self) -> str | None:  # why TOKEN_CACHE_DIR is not used here, or None
        return self._file.unusable if self._file is not None else None

    @property
    def closed(self) -> bool:
        return self._refresher.closed

    @property
    def last_error(self) -> str | None:
        """The last upstream error (class and redacted message) since the last success, or None."""
        return self._refresher.last_error

    def refresh(self, *, wait: bool = False, timeout: float | None = None) -> bool:
        """Ask for a new token now. With ``wait``, block until that attempt finished and return whether a
        new token was installed. Callers keep getting the cached token meanwhile.

        azure-identity answers from its own cache while a token has more than 5 minutes left (and has not
        reached its ``refresh_on``); then no new token comes back and the worker asks again later."""
        return self._refresher.refresh(wait=wait, timeout=self._timeout if timeout is None else timeout)

    def subscribe(self, callback: Callable[[AccessTokenInfo], None]) -> Callable[[], None]:
        """Call ``callback(token_info)`` from the worker thread whenever a new token is installed.
        Returns a function that unsubscribes. Adapters use it to re-AUTH live connections."""
        return self._refresher.subscribe(lambda token: callback(token.info))

    def close(self) -> None:
        """Stop the worker; waiting callers get TokenUnavailableError. Used on reset and in tests."""
        self._refresher.close()

    def after_fork(self) -> None:
        """In a forked child: new locks and worker, and no HTTP connection shared with the parent."""
        self._refresher.after_fork()  # calls Upstream.after_fork

    def __enter__(self) -> TokenProvider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<TokenProvider scope={self.scope!r} identity={self.identity!r} token={self._refresher.value!r}>"
        )

    # ------------------------------------------------------------------ slow paths

    def _for_scopes(self, scopes: tuple[str, ...]) -> TokenProvider:
        if len(scopes) != 1:
            raise ValueError(f"a token is for exactly one scope; got {len(scopes)}: {scopes!r}")
        if self._siblings is None:  # built directly: one credential, one audience
            raise ScopeRefusedError(
                f"this TokenProvider serves {self.scope!r} only; asked for {scopes[0]!r}. No token was "
                "fetched. Use get_token_provider(scope) (its providers route every scope of the identity), "
                "or build one TokenProvider per scope.",
                scope=scopes[0],
                binding=f"TokenProvider({self.scope!r})",
            )
        return self._siblings(scopes[0])

    def _unavailable(self, why: str) -> TokenUnavailableError:
        last = self._refresher.last_error
        message = f"No token for scope {self.scope} ({self.identity}): {why}."
        if last:
            message += f" Last error: {last.rstrip('.')}."
        token = self._refresher.value
        if token is not None:
            message += f" The last token expired {self.clock.time() - token.expires_on:.0f}s ago."
        return TokenUnavailableError(message, scope=self.scope, identity=self.identity, last_error=last)

    def _claims_challenge(self, claims: str) -> Token:
        """A resource rejected our token with a claims challenge: fetch a new one now (synchronously)."""
        try:
            token = self._fetch(self._refresher.value, claims=claims)
        except Exception as exc:
            raise self._unavailable(f"claims challenge failed: {describe_error(exc)}") from None
        self._refresher.install(token)
        return token

    def _acquire(self, current: Token | None) -> Token:
        """The refresher's fetch: from the file cache when another process renewed it, else upstream."""
        if self._file is None:
            return self._fetch(current)
        return self._file.acquire(current, self._fetch, self._timeout, self._refresh_margin)

    def _fetch(self, current: Token | None, claims: str | None = None) -> Token:
        return self._upstream.fetch(current, claims, self._refresher.retry_base)


class Upstream:
    """Where one provider's tokens come from: its credential (built on first use by ``factory``, dropped in
    a forked child so that no HTTP connection is shared with the parent), asked by one thread at a time."""

    def __init__(
        self,
        credential: TokenCredential | None,
        factory: Callable[[], TokenCredential] | None,
        scope: str,
        source: str,
        refresh_margin: float,
        clock: Clock = SYSTEM,
    ) -> None:
        if credential is None and factory is None:
            raise ValueError("pass a credential or a credential_factory")
        self.credential, self.factory = credential, factory
        self.scope, self.source, self.refresh_margin, self.clock = scope, source, refresh_margin, clock
        self.requests = 0
        install_log_redaction()  # the credential's loggers exist once it is built (lazy imports)
        self._lock = threading.Lock()

    def fetch(self, current: Token | None, claims: str | None = None, retry_base: float = 1.0) -> Token:
        """One upstream call (azure-core's own retries inside). Raises :class:`Defer` when the credential
        answers with the token we already hold (MSAL serving its cache): not a failure, ask again later."""
        with self._lock:
            credential = self.credential
            if credential is None:
                assert self.factory is not None
                credential = self.credential = self.factory()
                install_log_redaction()
            self.requests += 1
            started = self.clock.time()
            get_info = getattr(credential, "get_token_info", None)
            if get_info is not None:
                options: TokenRequestOptions = {"claims": claims} if claims else {}
                info = get_info(self.scope, options=options or None)
            else:
                access = credential.get_token(self.scope, claims=claims)
                info = AccessTokenInfo(access.token, access.expires_on)
        now = self.clock.time()
        token = checked(info, started, self.source, self.refresh_margin, "the credential", now)
        info = token.info
        if current is not None and (info.token == current.value or info.expires_on < current.expires_on):
            at = policy.upstream_cache_retry(now, current.expires_on, current.usable_until, retry_base)
            valid_for = current.usable_until - now
            raise Defer(at, f"the credential still serves its cached token (valid for {valid_for:.0f}s)")
        return token

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        if self.factory is not None:
            self.credential = None


def _describe(token: Token, now: float) -> str:
    """What the logs say of a token."""
    return f"source={token.source} expires_in={token.expires_on - now:.0f}s length={len(token.value)}"


def _idleness(provider: TokenProvider, lifetimes: float) -> Idleness[Token] | None:
    """A provider nobody has called for ``lifetimes`` token lifetimes stops renewing (0: never stops). Its
    callers: hot-path hits and waits."""
    if not lifetimes:
        return None
    return Idleness(
        lambda: provider._hits + provider._refresher.waits,
        lambda token: lifetimes * max(1.0, token.expires_on - token.acquired_at),
        provider.clock,
    )


class AsyncTokenProvider:
    """A :class:`TokenProvider` seen as an ``azure.core`` ``AsyncTokenCredential``: returns at once when the
    token is cached, otherwise waits on the event loop for the provider's single flight (a claims challenge
    or another scope: in a thread, not the event loop)."""

    def __init__(self, provider: TokenProvider) -> None:
        self.provider = provider

    async def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        token = self._cached(scopes) if not claims else None
        if token is not None:
            return token.access
        if not claims and scopes == self.provider._scopes:
            return (await self.provider.current_async()).access
        call = functools.partial(self.provider.get_token, *scopes, claims=claims)
        return await asyncio.get_running_loop().run_in_executor(None, call)

    async def get_token_info(
        self, *scopes: str, options: TokenRequestOptions | None = None
    ) -> AccessTokenInfo:
        token = self._cached(scopes) if not options else None
        if token is not None:
            return token.info
        if not options and scopes == self.provider._scopes:
            return (await self.provider.current_async()).info
        call = functools.partial(self.provider.get_token_info, *scopes, options=options)
        return await asyncio.get_running_loop().run_in_executor(None, call)

    async def current(self) -> Token:
        """:meth:`TokenProvider.current` for a coroutine: the cached token without an await; otherwise the
        caller waits on its event loop for the worker's single flight (no thread per caller). The cached
        branch repeats :meth:`TokenProvider.current`'s, which is inlined there (the hot path)."""
        provider = self.provider
        refresher = provider._refresher
        token = refresher.value
        now = provider.clock.time()
        if token is not None and now < token.usable_until:
            provider._hits += 1
            if now >= refresher.poke_after:
                refresher.poke()
            return token
        try:
            return await refresher.get_async(provider._timeout)
        except NotReady as exc:
            why = _WHY[exc.reason].format(retry_in=exc.retry_in, timeout=provider._timeout)
            raise provider._unavailable(why) from None

    def _cached(self, scopes: tuple[str, ...]) -> Token | None:
        """The cached token if it can be had without taking a lock or waiting."""
        provider = self.provider
        refresher = provider._refresher
        token = refresher.value
        now = provider.clock.time()
        fresh = token is not None and now < token.usable_until and now < refresher.poke_after
        if fresh and scopes == provider._scopes:
            provider._hits += 1
            return token
        return None

    async def close(self) -> None:
        """Does nothing: the provider is shared process-wide."""

    async def __aenter__(self) -> AsyncTokenProvider:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        pass

    def __repr__(self) -> str:
        return f"<AsyncTokenProvider {self.provider!r}>"
