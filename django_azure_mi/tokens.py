"""The token core: one :class:`TokenProvider` per (identity, scope), process-wide.

What it adds to azure-identity (DESIGN.md §4):

* **single-flight** - only the provider's worker thread talks to the identity endpoint, so N callers on a
  cold provider cause one request, and there is never more than one request in flight per scope;
* **background refresh** - the worker renews the token ``refresh_margin`` seconds before expiry (or at the
  token's ``refresh_on`` if earlier, never in the first half of its life) with jitter; callers keep getting
  the cached token meanwhile and never wait for the endpoint while a valid token is cached;
* **stale-while-valid** - refresh failures are retried with capped exponential backoff + jitter for as long
  as the process lives, and the cached token is served until it is about to expire; after that callers get
  :class:`TokenUnavailableError` naming scope, identity and the last upstream error (never the token);
* **fork safety** - after ``os.fork()`` the child gets new locks and a new worker (gunicorn ``--preload``);
* an optional **per-host file cache** (``TOKEN_CACHE_DIR``) so N cold processes make one request per scope.

A provider is itself an azure-core ``TokenCredential`` (``get_token``/``get_token_info``), so it can be
handed to any Azure SDK client; asking it for another scope routes to the sibling provider of the same
identity.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import math
import os
import random
import re
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Final

from azure.core.credentials import AccessToken, AccessTokenInfo, TokenCredential, TokenRequestOptions
from azure.core.exceptions import ClientAuthenticationError
from django.core.exceptions import ImproperlyConfigured

logger = logging.getLogger("django_azure_mi.tokens")

# A token is handed out until this long before it expires (at most 10 % of its lifetime, for short test TTLs).
EXPIRY_BUFFER: Final = 30.0
# Jitter on the refresh time: up to this many seconds (at most 5 % of the lifetime) earlier.
REFRESH_JITTER: Final = 60.0
# azure-identity (MSAL) answers from its own cache until a token has less than this left (or passed its
# refresh_on); asking earlier returns the token we already hold.
UPSTREAM_CACHE_WINDOW: Final = 300.0

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")


def redact(text: str) -> str:
    """Replace anything shaped like a JWT in ``text`` (error messages from upstream) with ``<redacted>``."""
    return _JWT.sub("<redacted token>", text)


def describe_error(exc: BaseException, limit: int = 500) -> str:
    """``ClassName: message`` with tokens redacted and length capped - safe for logs and exceptions."""
    message = redact(" ".join(str(exc).split()))
    if len(message) > limit:
        message = message[: limit - 1] + "…"
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class TokenUnavailableError(ClientAuthenticationError):
    """No valid token for ``scope`` could be had. Carries no token, only what went wrong."""

    def __init__(self, message: str, *, scope: str, identity: str, last_error: str | None = None) -> None:
        super().__init__(message=message)
        self.scope = scope
        self.identity = identity
        self.last_error = last_error


class TokenCacheError(ImproperlyConfigured):
    """TOKEN_CACHE_DIR is unusable (wrong owner or permissions)."""


class _SafeAccessToken(AccessToken):
    """An ``AccessToken`` whose repr does not show the token (Django's debug page prints locals)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"AccessToken(token=<{len(self.token)} chars>, expires_on={self.expires_on})"


class _SafeAccessTokenInfo(AccessTokenInfo):
    """An ``AccessTokenInfo`` whose repr does not show the token."""

    def __repr__(self) -> str:
        return (
            f"AccessTokenInfo(token=<{len(self.token)} chars>, expires_on={self.expires_on}, "
            f"token_type={self.token_type!r}, refresh_on={self.refresh_on})"
        )


class _Token:
    """A cached token plus the times the provider derives from it."""

    __slots__ = ("access", "acquired_at", "expires_on", "info", "refresh_due", "source", "usable_until")

    def __init__(self, info: AccessTokenInfo, acquired_at: float, source: str, refresh_margin: float) -> None:
        self.info = _SafeAccessTokenInfo(
            info.token, int(info.expires_on), token_type=info.token_type, refresh_on=info.refresh_on
        )
        self.access = _SafeAccessToken(info.token, int(info.expires_on))
        self.acquired_at = acquired_at
        self.expires_on = float(info.expires_on)
        self.source = source
        lifetime = max(1.0, self.expires_on - acquired_at)
        self.usable_until = self.expires_on - min(EXPIRY_BUFFER, lifetime * 0.1)
        # Refresh `refresh_margin` before expiry, never in the first half of the token's life (short TTLs).
        due = self.expires_on - min(refresh_margin, lifetime / 2)
        if info.refresh_on and acquired_at < info.refresh_on < due:
            due = float(info.refresh_on)
        self.refresh_due = due

    def __repr__(self) -> str:
        return (
            f"<token {len(self.info.token)} chars, expires in {self.expires_on - time.time():.0f}s, "
            f"source={self.source}>"
        )


class _FileCache:
    """One token per file in a 0700 directory: 0600 files, atomic replace, an flock against stampedes."""

    def __init__(self, directory: str, key: str) -> None:
        self.directory = directory
        name = hashlib.sha256(key.encode()).hexdigest()[:32]
        self.path = os.path.join(directory, f"{name}.json")
        self.lock_path = os.path.join(directory, f"{name}.lock")
        self.check_directory()

    def check_directory(self) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        st = os.stat(self.directory)
        if st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise TokenCacheError(
                f"AZURE_MANAGED_IDENTITY['TOKEN_CACHE_DIR'] = {self.directory!r} must be owned by this user "
                f"and closed to others (mode 0700); it has owner uid {st.st_uid} and mode "
                f"{oct(st.st_mode & 0o777)}. Run `chmod 700 {self.directory}` or point the setting at a new "
                "directory (it is created with 0700)."
            )

    @contextlib.contextmanager
    def locked(self, timeout: float) -> Iterator[None]:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        logger.warning(
                            "token cache lock %s busy for %.0fs; going on without it", self.lock_path, timeout
                        )
                        break
                    time.sleep(0.02)
            yield
        finally:
            os.close(fd)  # releases the flock

    def read(self) -> tuple[AccessTokenInfo, float] | None:
        """The stored token and when it was acquired, or None when missing, corrupt or expired."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        except OSError as exc:
            logger.warning("token cache file %s unreadable (%s); ignoring it", self.path, type(exc).__name__)
            return None
        try:
            with os.fdopen(fd, "rb") as fh:
                data = json.loads(fh.read(1 << 20))
            token, expires_on, acquired_at = (
                data["token"],
                float(data["expires_on"]),
                float(data["acquired_at"]),
            )
            refresh_on = data.get("refresh_on")
            if not isinstance(token, str) or not token or expires_on <= time.time():
                return None
            info = AccessTokenInfo(token, int(expires_on), refresh_on=int(refresh_on) if refresh_on else None)
            return info, acquired_at
        except (ValueError, KeyError, TypeError, OSError):
            logger.warning("token cache file %s is corrupt; it will be replaced", self.path)
            return None

    def write(self, token: _Token) -> None:
        data = {
            "token": token.info.token,
            "expires_on": token.expires_on,
            "refresh_on": token.info.refresh_on,
            "acquired_at": token.acquired_at,
        }
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".json")  # mode 0600
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


class TokenProvider:
    """Cached, single-flight, background-refreshed tokens for one scope of one identity.

    Usually obtained from :func:`django_azure_mi.get_token_provider`; construct directly to wrap any
    ``TokenCredential``. Thread-safe; fork-safe; a ``TokenCredential`` itself.
    """

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
        _family: _Family | None = None,
    ) -> None:
        if not isinstance(scope, str) or not scope:
            raise ValueError("scope must be a non-empty string, e.g. 'https://storage.azure.com/.default'")
        if credential is None and credential_factory is None:
            raise ValueError("pass a credential or a credential_factory")
        self.scope = scope
        self.identity = identity
        self._scopes = (scope,)
        self._credential = credential
        self._credential_factory = credential_factory
        self._source = source
        self._refresh_margin = float(refresh_margin)
        self._timeout = float(timeout)
        self._retry_base = float(retry_base)
        self._retry_cap = float(retry_cap)
        self._file = _FileCache(cache_dir, f"{identity}\0{scope}") if cache_dir else None
        self._family = _family if _family is not None else _Family(self._sibling_options())
        self._family.adopt(self)

        self._token: _Token | None = None
        self._failures = 0
        self._last_error: str | None = None
        self._attempts = 0  # finished upstream attempts (success or failure)
        self._next_attempt = 0.0
        self._closed = False
        self._subscribers: list[Callable[[AccessTokenInfo], None]] = []
        # counters (hits is approximate under heavy thread contention; the rest are exact)
        self._hits = 0
        self._waits = 0
        self._requests = 0
        self._failed = 0
        self._file_hits = 0
        self._acquired = 0
        self._init_sync()
        _live_providers.add(self)

    def _init_sync(self) -> None:
        """(Re)create everything that does not survive fork."""
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._upstream_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._in_flight = False
        self._wanted = False
        # Callers take the slow path (start/poke the worker) once time.time() passes this.
        self._slow_after = 0.0
        self._refresh_at = math.inf

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
        return (self._claims_challenge(claims) if claims else self._current()).access

    def get_token_info(self, *scopes: str, options: TokenRequestOptions | None = None) -> AccessTokenInfo:
        """Like :meth:`get_token`, returning ``AccessTokenInfo`` (with ``refresh_on``)."""
        if scopes != self._scopes:
            return self._for_scopes(scopes).get_token_info(*scopes, options=options)
        claims = options.get("claims") if options else None
        return (self._claims_challenge(claims) if claims else self._current()).info

    async def get_token_async(self, *scopes: str, claims: str | None = None) -> AccessToken:
        """Async entry point: returns at once when cached, otherwise waits in a thread, not the loop."""
        token = self._cached() if scopes == self._scopes and not claims else None
        if token is not None:
            return token.access
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(self.get_token, *scopes, claims=claims))

    async def get_token_info_async(
        self, *scopes: str, options: TokenRequestOptions | None = None
    ) -> AccessTokenInfo:
        token = self._cached() if scopes == self._scopes and not options else None
        if token is not None:
            return token.info
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            None, functools.partial(self.get_token_info, *scopes, options=options)
        )

    def _current(self) -> _Token:
        """The hot path: the cached token, poking the worker when a refresh is due; else wait for one."""
        token = self._token
        now = time.time()
        if token is not None and now < token.usable_until:
            self._hits += 1
            if now >= self._slow_after:
                self._poke()
            return token
        return self._wait(now)

    def _cached(self) -> _Token | None:
        """The cached token if it can be had without taking a lock or waiting (async fast path)."""
        token = self._token
        now = time.time()
        if token is not None and now < token.usable_until and now < self._slow_after:
            self._hits += 1
            return token
        return None

    def as_async(self) -> AsyncTokenProvider:
        """This provider as an ``azure.core`` ``AsyncTokenCredential`` (for ``.aio`` SDK clients)."""
        return AsyncTokenProvider(self)

    # ------------------------------------------------------------------ public extras

    @property
    def stats(self) -> dict[str, int]:
        """Counters: hits (served from memory), waits (callers that waited for a token), requests
        (upstream calls), failures (failed upstream calls), file_hits, acquired (new tokens installed)."""
        return {
            "hits": self._hits,
            "waits": self._waits,
            "requests": self._requests,
            "failures": self._failed,
            "file_hits": self._file_hits,
            "acquired": self._acquired,
        }

    @property
    def expires_on(self) -> float | None:
        """Expiry (epoch seconds) of the cached token, or None."""
        token = self._token
        return token.expires_on if token is not None else None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def last_error(self) -> str | None:
        """The last upstream error (class and redacted message) since the last success, or None."""
        return self._last_error

    def refresh(self, *, wait: bool = False, timeout: float | None = None) -> bool:
        """Ask the worker to fetch a new token now. With ``wait``, block until that attempt finished and
        return whether a new token was installed. Callers keep getting the cached token meanwhile.

        azure-identity answers from its own cache while a token has more than 5 minutes left (and has not
        reached its ``refresh_on``); then no new token comes back and the worker asks again later."""
        with self._cond:
            self._ensure_worker()
            seen = self._attempts + (1 if self._in_flight else 0)
            acquired = self._acquired
            self._wanted = True
            self._cond.notify_all()
            if not wait:
                return True
            deadline = time.monotonic() + (self._timeout if timeout is None else timeout)
            while self._attempts <= seen and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return self._acquired > acquired

    def subscribe(self, callback: Callable[[AccessTokenInfo], None]) -> Callable[[], None]:
        """Call ``callback(token_info)`` from the worker thread whenever a new token is installed.
        Returns a function that unsubscribes. Adapters use it to re-AUTH live connections."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe

    def close(self) -> None:
        """Stop the worker; waiting callers get TokenUnavailableError. Used on reset and in tests."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        _live_providers.discard(self)

    def __enter__(self) -> TokenProvider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<TokenProvider scope={self.scope!r} identity={self.identity!r} token={self._token!r}>"

    # ------------------------------------------------------------------ slow paths

    def _for_scopes(self, scopes: tuple[str, ...]) -> TokenProvider:
        if len(scopes) != 1:
            raise ValueError(
                f"managed identity tokens are for exactly one scope; got {len(scopes)}: {scopes!r}"
            )
        return self._family.get(scopes[0])

    def _poke(self) -> None:
        with self._cond:
            self._ensure_worker()
            if time.time() >= self._refresh_at:
                self._cond.notify_all()

    def _ensure_worker(self) -> None:
        """Start the worker if needed (first use; after fork). Call with the lock held."""
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(
                target=self._run, name=f"django-azure-mi token {self.scope}", daemon=True
            )
            self._thread.start()
            self._slow_after = self._refresh_at

    def _wait(self, now: float) -> _Token:
        """No usable token cached: wait for the worker (at most ``timeout`` seconds)."""
        deadline = now + self._timeout
        with self._cond:
            self._ensure_worker()
            seen = self._attempts
            while True:
                token = self._token
                now = time.time()
                if token is not None and now < token.usable_until:
                    self._waits += 1
                    return token
                if self._closed:
                    raise self._unavailable("the token provider was closed")
                if self._attempts > seen:
                    raise self._unavailable("the identity endpoint did not return a token")
                if not self._in_flight:
                    if self._failures and self._next_attempt > deadline:
                        raise self._unavailable(
                            f"the identity endpoint is failing; next retry in {self._next_attempt - now:.1f}s"
                        )
                    if not self._failures:
                        self._wanted = True
                        self._cond.notify_all()
                remaining = deadline - now
                if remaining <= 0:
                    raise self._unavailable(f"no token within {self._timeout:g}s (TIMEOUT)")
                self._cond.wait(remaining)

    def _unavailable(self, why: str) -> TokenUnavailableError:
        last = self._last_error
        message = f"No token for scope {self.scope} ({self.identity}): {why}."
        if last:
            message += f" Last error: {last.rstrip('.')}."
        if self._token is not None:
            message += f" The last token expired {time.time() - self._token.expires_on:.0f}s ago."
        return TokenUnavailableError(message, scope=self.scope, identity=self.identity, last_error=last)

    def _claims_challenge(self, claims: str) -> _Token:
        """A resource rejected our token with a claims challenge: fetch a new one now (synchronously)."""
        try:
            token = self._fetch(claims=claims)
        except Exception as exc:
            raise self._unavailable(f"claims challenge failed: {describe_error(exc)}") from None
        self._install(token, from_worker=False)
        return token

    # ------------------------------------------------------------------ the worker

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._wanted and time.time() < self._refresh_at:
                    self._cond.wait(min(self._refresh_at - time.time(), 3600.0))
                if self._closed:
                    return
                self._wanted = False
                self._in_flight = True
                self._slow_after = math.inf  # the worker is on it; callers need not poke
            try:
                token: _Token | Exception = self._acquire()
            except Exception as exc:
                token = exc
            if self._closed:  # closed meanwhile: drop the outcome quietly
                return
            if isinstance(token, _Token):
                self._install(token)
            elif isinstance(token, _StaleToken):
                self._retry_when_upstream_cache_expires()
            else:
                self._record_failure(token)

    def _acquire(self) -> _Token:
        if self._file is None:
            return self._fetch()
        with self._file.locked(self._timeout):
            stored = self._file.read()
            current = self._token
            if stored is not None:
                candidate = _Token(stored[0], stored[1], "file", self._refresh_margin)
                fresher = current is None or candidate.expires_on > current.expires_on
                if fresher and time.time() < candidate.refresh_due:
                    with self._lock:
                        self._file_hits += 1
                    return candidate
            token = self._fetch()
            try:
                self._file.write(token)
            except OSError as exc:
                logger.warning("could not write token cache %s: %s", self._file.path, type(exc).__name__)
            return token

    def _fetch(self, claims: str | None = None) -> _Token:
        """One upstream call (with azure-core's own retries inside); never two at once."""
        with self._upstream_lock:
            credential = self._credential
            if credential is None:
                assert self._credential_factory is not None
                credential = self._credential = self._credential_factory()
            with self._lock:
                self._requests += 1
            started = time.time()
            get_info = getattr(credential, "get_token_info", None)
            if get_info is not None:
                options: TokenRequestOptions = {"claims": claims} if claims else {}
                info = get_info(self.scope, options=options or None)
            else:
                access = credential.get_token(self.scope, claims=claims)
                info = AccessTokenInfo(access.token, access.expires_on)
            if not isinstance(info.token, str) or not info.token:
                raise ValueError("the credential returned an empty token")
            if info.expires_on <= time.time():
                raise ValueError("the credential returned an already expired token")
            current = self._token
            if current is not None and (
                info.token == current.info.token or info.expires_on < current.expires_on
            ):
                # MSAL answers from its cache when it could not refresh: that is a failure to us.
                raise _StaleToken("the identity endpoint returned no newer token than the one we hold")
            return _Token(info, started, self._source, self._refresh_margin)

    def _end_attempt(self, refresh_at: float, counted: bool = True) -> None:
        """Bookkeeping when an upstream attempt ends; call with the lock held."""
        self._refresh_at = refresh_at
        self._slow_after = refresh_at if self._thread is not None else 0.0
        if counted:
            self._attempts += 1
            self._in_flight = False
        self._cond.notify_all()

    def _install(self, token: _Token, from_worker: bool = True) -> None:
        now = time.time()
        with self._cond:
            self._token = token
            self._acquired += 1
            self._failures = 0
            self._last_error = None
            self._end_attempt(max(token.refresh_due - _jitter(token), now), counted=from_worker)
            subscribers = list(self._subscribers)
            logger.info(
                "token acquired: scope=%s identity=%s source=%s expires_in=%ds length=%d next_refresh_in=%ds",
                self.scope,
                self.identity,
                token.source,
                token.expires_on - now,
                len(token.info.token),
                self._refresh_at - now,
            )
        for callback in subscribers:
            try:
                callback(token.info)
            except Exception as exc:
                logger.exception("token subscriber %r failed: %s", callback, describe_error(exc))

    def _retry_when_upstream_cache_expires(self) -> None:
        """The credential answered from its own cache (not a failure): ask again once that cache lets go."""
        now = time.time()
        with self._cond:
            token = self._token
            assert token is not None
            retry_at = token.expires_on - UPSTREAM_CACHE_WINDOW + random.uniform(1.0, 10.0)
            self._end_attempt(
                max(now + self._retry_base, min(retry_at, token.usable_until - self._retry_base))
            )
            logger.info(
                "token refresh deferred: scope=%s identity=%s the credential still serves its cached token "
                "(valid for %ds); asking again in %.0fs",
                self.scope,
                self.identity,
                token.usable_until - now,
                self._refresh_at - now,
            )

    def _record_failure(self, exc: BaseException) -> None:
        now = time.time()
        error = describe_error(exc)
        with self._cond:
            self._failures += 1
            self._failed += 1
            self._last_error = error
            delay = min(self._retry_cap, self._retry_base * 2 ** min(self._failures - 1, 30))
            delay *= random.uniform(0.5, 1.0)
            token = self._token
            valid_for = token.usable_until - now if token is not None else 0.0
            if valid_for > 0:  # retry at least twice more before the cached token runs out
                delay = min(delay, max(self._retry_base, valid_for / 3))
            self._next_attempt = now + delay
            self._end_attempt(self._next_attempt)
            logger.log(
                logging.WARNING if valid_for > 0 or self._failures == 1 else logging.ERROR,
                "token refresh failed: scope=%s identity=%s error=%s attempt=%d cached_token_valid_for=%ds "
                "next_retry_in=%.1fs",
                self.scope,
                self.identity,
                error,
                self._failures,
                max(0.0, valid_for),
                delay,
            )

    def _sibling_options(self) -> dict[str, Any]:
        return {
            "credential": self._credential,
            "credential_factory": self._credential_factory,
            "identity": self.identity,
            "source": self._source,
            "refresh_margin": self._refresh_margin,
            "timeout": self._timeout,
            "cache_dir": self._file.directory if self._file else None,
            "retry_base": self._retry_base,
            "retry_cap": self._retry_cap,
        }

    def _after_fork_in_child(self) -> None:
        self._init_sync()
        if self._credential_factory is not None:
            self._credential = None  # don't share the parent's HTTP connections
        token = self._token
        if token is not None:
            # re-jitter so that N forked workers don't all refresh at the same instant
            self._refresh_at = token.refresh_due - _jitter(token)


def _jitter(token: _Token) -> float:
    """Seconds to refresh early: random, up to REFRESH_JITTER or 5 % of the token's lifetime."""
    return random.uniform(0, min(REFRESH_JITTER, (token.expires_on - token.acquired_at) * 0.05))


class _StaleToken(Exception):
    pass


class _Family:
    """The providers of one identity, one per scope; shared by siblings for cross-scope requests."""

    def __init__(self, options: dict[str, Any]) -> None:
        self._options = options
        self._lock = threading.RLock()  # get() holds it while the new provider adopts itself
        self._providers: dict[str, TokenProvider] = {}

    def adopt(self, provider: TokenProvider) -> None:
        with self._lock:
            self._providers.setdefault(provider.scope, provider)

    def get(self, scope: str) -> TokenProvider:
        provider = self._providers.get(scope)
        if provider is None or provider._closed:
            with self._lock:
                provider = self._providers.get(scope)
                if provider is None or provider._closed:
                    provider = TokenProvider(scope=scope, _family=self, **self._options)
                    self._providers[scope] = provider
        return provider

    def close(self) -> None:
        with self._lock:
            providers = list(self._providers.values())
            self._providers.clear()
        for provider in providers:
            provider.close()


class AsyncTokenProvider:
    """A :class:`TokenProvider` seen as an ``azure.core`` ``AsyncTokenCredential``."""

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
        return await self.provider.get_token_async(*scopes, claims=claims)

    async def get_token_info(
        self, *scopes: str, options: TokenRequestOptions | None = None
    ) -> AccessTokenInfo:
        return await self.provider.get_token_info_async(*scopes, options=options)

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


# ---------------------------------------------------------------------- process-wide registry

_live_providers: weakref.WeakSet[TokenProvider] = weakref.WeakSet()
_registry_lock = threading.Lock()
_families: dict[Any, _Family] = {}


def get_provider(
    key: Any, scope: str, credential_factory: Callable[[], TokenCredential], **options: Any
) -> TokenProvider:
    """The process-wide provider for (identity ``key``, ``scope``); ``key`` must be hashable and capture
    everything that makes two credentials differ (identity, cloud, timeouts, cache dir)."""
    family = _families.get(key)
    if family is None:
        with _registry_lock:
            family = _families.get(key)
            if family is None:
                family = _Family({"credential": None, "credential_factory": credential_factory, **options})
                _families[key] = family
    return family.get(scope)


def reset() -> None:
    """Close every provider and forget them (tests, settings changes)."""
    with _registry_lock:
        families = list(_families.values())
        _families.clear()
    for family in families:
        family.close()
    for provider in list(_live_providers):
        provider.close()


def _after_fork_in_child() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()
    for family in list(_families.values()):
        family._lock = threading.RLock()
    for provider in list(_live_providers):
        provider._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
