"""Which identity a cache signs in with, and the re-AUTH schedule of its connections.

``EntraAuth`` is one per (identity, scope, USERNAME), owned by the runtime: the token for new connections,
the user name to AUTH with, when a connection is due to re-AUTH, and the sweep that re-AUTHs idle pooled
connections - a :class:`~django_azure_mi.core.refresher.Refresher` like every renewal in the package, woken
early by each new token.
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl, urlsplit

import redis
import redis.asyncio
from django.utils.module_loading import import_string
from redis.exceptions import ConnectionError as RedisConnectionError

from .. import diagnostics, runtime
from ..core import policy
from ..core.clock import SYSTEM, Clock
from ..core.errors import TokenUnavailableError, describe_error
from ..core.refresher import Refresher
from ..core.token import Token
from ..diagnostics import SettingError
from ..options import Bound, OptionSpec, ServiceBinding, bind, refuse_near_miss, require_tls, verifies
from .diagnosis import diagnose_error
from .spec import OPTION as OPTION
from .spec import SPEC as SPEC
from .spec import WHERE as WHERE

if TYPE_CHECKING:
    from ..core.provider import TokenProvider
    from .connection import EntraConnectionPool

logger = logging.getLogger("django_azure_mi.cache")


@dataclass(frozen=True)
class EntraSettings(Bound):
    """The validated identity option (``OPTIONS["MANAGED_IDENTITY"]`` of a cache, or
    ``["managed_identity"]`` of Celery's transport options) of one Redis client."""

    binding: ServiceBinding
    username: str | None  # the identity's object id; None: the token's oid claim
    upper: bool = field(default=True, compare=False)  # the option's keys: upper case (caches) or lower
    url_setting: str = field(default="", compare=False)  # the setting with the URL (default: LOCATION)

    @property
    def where(self) -> str:
        """The dict that holds the option, in messages, e.g. ``CACHES['sessions']['OPTIONS']``."""
        return self.binding.where.rsplit("[", 1)[0]

    @property
    def location(self) -> str:
        """The setting that holds the URL, in messages, e.g. ``CACHES['sessions']['LOCATION']``."""
        cache = self.where.removesuffix("['OPTIONS']")
        return self.url_setting or f"{cache}['LOCATION']"

    def key(self, name: str) -> str:
        """``name`` as this option spells it, with its path: ``…['MANAGED_IDENTITY']['USERNAME']``."""
        return f"{self.binding.where}['{name.upper() if self.upper else name.lower()}']"


def parse_options(
    raw: Any, where: str = WHERE, spec: OptionSpec = SPEC, url_setting: str = ""
) -> EntraSettings:
    binding = bind(spec, raw, where)
    return EntraSettings(binding, binding.values["username"], spec.upper, url_setting)


def refuse_credentials(options: dict[str, Any], keys: tuple[str, str], where: str = WHERE) -> None:
    """A password or user name in the cache's OPTIONS (django-redis: upper case; the built-in backend: lower
    case) next to the managed identity; a near miss of ``MANAGED_IDENTITY``."""
    refuse_near_miss(options, OPTION, where, SPEC.check_id)
    for key in keys:
        if options.get(key):
            raise SettingError(
                "E021",
                f"{where}['{key}'] is set while the cache signs in with a managed identity.",
                f"Remove it; put the identity's object id in {where}['{OPTION}']['USERNAME'] if needed.",
            )


# Azure Managed Redis hosts (<name>.<region>.redis.azure.net): database 0 only; three clustering policies
AMR_HOSTS: Final = (".redis.azure.net",)


def is_amr_host(url: str) -> bool:
    return (urlsplit(url).hostname or "").lower().endswith(AMR_HOSTS)


def tls_port(host: str, port: Any) -> int:
    """The TLS port to suggest for ``host``: the given one if it is Azure's (6380 Azure Cache for Redis,
    10000 Azure Managed Redis), else the one the host's service listens on (6379 has no TLS on Azure)."""
    if port in (6380, 10000, "6380", "10000"):
        return int(port)
    return 10000 if is_amr_host(f"rediss://{host}") else 6380


def check_location(url: str, where: str = "CACHES[…]['LOCATION']") -> None:
    """No credentials in the URL; TLS (``rediss://``) unless the host is loopback; database 0 on Azure
    Managed Redis."""
    parts = urlsplit(url)
    if is_amr_host(url):
        db = parts.path.strip("/") or dict(parse_qsl(parts.query)).get("db", "0")
        if db != "0":
            raise SettingError(
                "E027",
                f"{where} selects database {db!r} on Azure Managed Redis, which has database 0 only "
                "(SELECT answers 'DB index is out of range').",
                f"Use rediss://{parts.hostname}:{parts.port or 10000}/0; keep apart what shared a server "
                "through databases with key prefixes (KEY_PREFIX; Celery's broker and results share "
                "database 0 without collisions).",
            )
    if parts.username or parts.password:
        raise SettingError(
            "E021",
            f"{where} has credentials in the URL ({parts.scheme}://…@{parts.hostname}) while the cache signs "
            "in with a managed identity.",
            "Remove them: the identity's object id and token are sent instead.",
        )
    require_tls(
        "E022",
        [parts.hostname],
        parts.scheme != "redis",
        f"{where} uses redis:// (no TLS) to {parts.hostname}: the access token would travel in clear text.",
        f"Use rediss://{parts.hostname}:{tls_port(parts.hostname or '', parts.port)}/… (TLS: Azure Cache "
        "for Redis listens on port 6380, Azure Managed Redis on 10000).",
    )


def check_url_transport(url: str, kwargs: dict[str, Any], settings: EntraSettings, where: str) -> None:
    """:func:`check_transport` on what ``ConnectionPool.from_url(url, **kwargs)`` will build (the system
    checks and the backends' constructors, before any pool exists)."""
    import redis
    from redis.connection import parse_url

    url_options = parse_url(url)  # type: ignore[no-untyped-call]
    if "connection_class" in kwargs:
        url_options["connection_class"] = kwargs["connection_class"]
    merged = {**kwargs, **url_options}
    check_transport(merged.get("connection_class", redis.Connection), merged, settings, where)


# What an SSL connection of ours verifies when the settings say nothing (redis-py 5 did not check host names)
TLS_DEFAULTS: Final = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
# redis-py's TLS and local-socket connection classes, sync and asyncio
SSL_CLASSES: Final = (redis.SSLConnection, redis.asyncio.SSLConnection)
UNIX_CLASSES: Final = (redis.UnixDomainSocketConnection, redis.asyncio.UnixDomainSocketConnection)


def check_transport(
    connection_class: Any, kwargs: dict[str, Any], settings: EntraSettings, where: str
) -> None:
    """The TLS rule on what redis-py will really use (the connection class and SSL options after the URL,
    ``CONNECTION_POOL_KWARGS``/``OPTIONS`` and the query string are merged): a token goes to a non-loopback
    host only over TLS that verifies the server (certificate and host name), unless ``VERIFY_TLS`` is
    False."""
    if isinstance(connection_class, str):
        connection_class = import_string(connection_class)
    if issubclass(connection_class, UNIX_CLASSES):
        return  # a local socket
    host = kwargs.get("host") or "localhost"
    tls = issubclass(connection_class, SSL_CLASSES)
    require_tls(
        "E022",
        [host],
        tls,
        f"{where}: the connection to {host} would not use TLS ({connection_class.__name__}): the access "
        "token would travel in clear text.",
        f"Use rediss://{host}:{tls_port(host, kwargs.get('port'))}/… and no plain connection_class (TLS: "
        "Azure Cache for Redis listens on port 6380, Azure Managed Redis on 10000).",
    )
    if not tls:
        return
    # absent: the verifying values EntraConnectionPool sets (TLS_DEFAULTS), whatever redis-py's defaults
    reqs = kwargs.get("ssl_cert_reqs", TLS_DEFAULTS["ssl_cert_reqs"])
    hostname = kwargs.get("ssl_check_hostname", TLS_DEFAULTS["ssl_check_hostname"])
    require_tls(
        "E022",
        [host],
        (verifies("ssl_cert_reqs", reqs) and verifies("ssl_check_hostname", hostname))
        or not settings.binding.values["verify_tls"],
        f"{where}: TLS to {host} would not verify the server (ssl_cert_reqs={reqs!r}, ssl_check_hostname="
        f"{hostname!r}): the access token could go to an impostor.",
        "Remove those options (verified: ssl_cert_reqs='required' and ssl_check_hostname=True, the defaults; "
        "Azure's certificates verify against the default trust store), or set "
        f"{settings.key('verify_tls')} = False to accept the risk (manage.py check warns).",
    )


class EntraAuth:
    """Tokens and user name for one identity/scope, and the sweep that re-AUTHs its pools' idle
    connections. A runtime component: :func:`get_auth`."""

    def __init__(self, settings: EntraSettings, clock: Clock = SYSTEM) -> None:
        self.settings, self.clock = settings, clock
        self._pools: weakref.WeakSet[EntraConnectionPool] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._unsubscribe: Any = None
        self.wakers: list[Any] = []  # called (any thread) with the sweeper's wake-ups: the asyncio sweeps
        self.interval = 5.0  # sweep period; shortened for short-lived tokens
        self.reauths = 0  # reported by azure_check, the status page and the benchmarks
        self.reauth_failures = 0
        self.sweeper: Refresher[float] = Refresher(
            "redis re-auth",
            self._sweep,
            schedule=lambda next_at: next_at,
            describe=lambda _: "idle connections swept",
            log_level=logging.DEBUG,
            clock=clock,
        )

    @property
    def provider(self) -> TokenProvider:
        return self.settings.provider

    def token(self) -> Token:
        """The current token; a TokenUnavailableError becomes a redis ConnectionError, so redis-py cleans up
        and retries."""
        self._check_open()
        try:
            return self.provider.current()
        except TokenUnavailableError as exc:
            raise self._no_token(exc) from None

    async def token_async(self) -> Token:
        """:meth:`token` for an asyncio connection: no await when cached, the event loop never blocked."""
        self._check_open()
        try:
            return await self.provider.current_async()
        except TokenUnavailableError as exc:
            raise self._no_token(exc) from None

    def _check_open(self) -> None:
        if self.sweeper.closed:  # reset: a late sweep or connection must not build a new provider
            raise RedisConnectionError("django-azure-mi: this cache's identity was reset")

    @staticmethod
    def _no_token(exc: TokenUnavailableError) -> BaseException:
        failure = diagnostics.diagnose_identity(exc)
        assert failure is not None
        return diagnostics.attach(RedisConnectionError(str(exc)), failure)

    def username(self, token: Token) -> str:
        if self.settings.username:
            return self.settings.username
        oid = token.claims.get("oid")
        if not oid:
            raise SettingError(
                "E020",
                f"The token for {self.settings.scope} has no oid claim;",
                f"set {self.settings.key('username')} to the identity's object id.",
            )
        return str(oid)

    def due(self, token: Token) -> float:
        """When a connection AUTHed with ``token`` should re-AUTH (jittered per connection)."""
        interval = policy.sweep_interval(token.expires_on, token.issued_at)
        if interval < self.interval:
            self.interval = interval
            self._wake(None)  # the sweepers may be sleeping on the longer interval
        return policy.reauth_due(token.expires_on, token.issued_at)

    def explain(self, exc: BaseException, token: Token) -> tuple[str, diagnostics.ServiceFailure]:
        """The message (and failure) for a refused AUTH - never the token."""
        oid = token.claims.get("oid")
        username = self.username(token)
        failure = diagnose_error(exc, self.settings, self.settings.username, oid)
        return diagnostics.explain(
            f"Redis refused AUTH as {username!r} with a token for {self.settings.scope} "
            f"({self.provider.identity}, oid {oid}): {describe_error(exc)}.",
            failure,
        )

    def register(self, pool: EntraConnectionPool) -> None:
        with self._lock:
            self._pools.add(pool)
        self.ensure_sweeper()

    def ensure_sweeper(self) -> None:
        """Start the sweeper if it is not running (first pool; after fork)."""
        self.sweeper.poke()
        if self._unsubscribe is None and not self.sweeper.closed:
            with self._lock:
                if self._unsubscribe is None:  # a new token: look for due connections at once
                    self._unsubscribe = self.provider.subscribe(self._wake)

    def _wake(self, info: Any) -> None:
        self.sweeper.refresh()
        for wake in self.wakers:
            wake()

    def _sweep(self, previous: float | None) -> float:
        now = self.clock.time()
        with self._lock:
            pools = list(self._pools)
        for pool in pools:
            if self.sweeper.closed:
                break
            try:
                pool.reauth_idle(now)
            except Exception as exc:
                logger.warning("redis re-AUTH sweep failed: %s", describe_error(exc))
        return self.clock.time() + self.interval

    def close(self) -> None:
        """Stop the sweeper and wait (briefly) for a sweep in progress to finish."""
        if self._unsubscribe is not None:
            self._unsubscribe()
        self.sweeper.close(join=5)

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self.sweeper.after_fork()  # restarted by the next pool that registers or reconnects


def get_auth(settings: EntraSettings, rt: runtime.Runtime | None = None) -> EntraAuth:
    """The runtime's EntraAuth for ``settings``."""
    rt = rt or runtime.get()
    return rt.component(("redis-auth", settings), lambda: EntraAuth(settings, rt.clock))


class UsesEntra:
    """For the objects that hold ``entra_settings`` (connections, pools, the django-redis factory): their
    ``EntraAuth``, resolved once per runtime and again only when the runtime changes (a settings change)."""

    entra_settings: EntraSettings

    @runtime.per_runtime
    def entra(self, rt: runtime.Runtime) -> EntraAuth:
        return get_auth(self.entra_settings, rt)
