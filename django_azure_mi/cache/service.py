"""Redis (Azure Cache for Redis, Azure Managed Redis) as a service of django-azure-mi
(:mod:`django_azure_mi.services`): its scopes, the cache checks, the probe of any Redis client of ours
(caches here, Celery's broker and results in :mod:`django_azure_mi.celery.service`) and the diagnosis of
Redis errors. Imports no redis-py at module level: the checks report a missing one (E006)."""

from __future__ import annotations

import uuid
from typing import Any, Final
from urllib.parse import urlsplit

from django.core import checks

from ..services import Argument, CheckId, Selection, Service, Target, aliases
from .diagnosis import diagnose, diagnose_error

NAME: Final = "redis"
BACKEND: Final = "django_azure_mi.cache.RedisCache"
FACTORY: Final = "django_azure_mi.cache.EntraConnectionFactory"
ENTRA_CLIENT: Final = "django_azure_mi.cache.EntraClient"
SCOPES: Final = {
    "public": "https://redis.azure.com/.default",
    "usgovernment": "https://redis.azure.us/.default",
    "china": "https://redis.azure.cn/.default",
}
_AZURE_HOSTS: Final = (".redis.cache.windows.net", ".redis.azure.net", ".redis.cache.usgovcloudapi.net",
                       ".redis.cache.chinacloudapi.cn")  # fmt: skip


def uses_ours(cache: dict[str, Any]) -> bool:
    """Does this ``CACHES`` entry sign in through django-azure-mi (our backend, or django-redis with our
    connection factory)?"""
    backend = cache.get("BACKEND", "")
    factory = (cache.get("OPTIONS") or {}).get("CONNECTION_FACTORY")
    return bool(backend == BACKEND or (backend.startswith("django_redis.") and factory == FACTORY))


# ---------------------------------------------------------------------------------------------- checks


def check(errors: list[checks.CheckMessage]) -> None:
    from django.conf import settings

    from .. import conf
    from ..checks import run_check, warn_foreign_scope, warn_unverified
    from ..options import split_locations

    for alias, cache in (getattr(settings, "CACHES", None) or {}).items():
        backend = cache.get("BACKEND", "")
        options = cache.get("OPTIONS") or {}
        obj = f"CACHES[{alias!r}]"
        identity = options.get("MANAGED_IDENTITY")
        if uses_ours(cache):
            run_check(errors, obj, _validate, backend, cache, obj)
            warn_unverified(errors, obj, identity, "VERIFY_TLS", "W022")
            warn_foreign_scope(errors, obj, identity, "SCOPE", NAME)
            if backend.startswith("django_redis.") and not _client_fits_amr(cache):
                errors.append(
                    checks.Warning(
                        f"{obj} points at Azure Managed Redis with CLIENT_CLASS "
                        f"{options.get('CLIENT_CLASS', 'django_redis.client.DefaultClient')!r}: its "
                        "set_many and delete_pattern run MULTI, which the OSS and Enterprise clustering "
                        "policies refuse across hash slots (CROSSSLOT), and it has no cluster client for the "
                        "OSS policy.",
                        hint=f"Set {obj}['OPTIONS']['CLIENT_CLASS'] = '{ENTRA_CLIENT}' (django-redis's "
                        "client that works on every policy), unless this database uses the Non-clustered "
                        "policy.",
                        obj=obj,
                        id="django_azure_mi.W023",
                    )
                )
            username = identity.get("USERNAME") if isinstance(identity, dict) else None
            if isinstance(username, str) and username and not conf.GUID.match(username):
                errors.append(
                    checks.Warning(
                        f"{obj}['OPTIONS']['MANAGED_IDENTITY']['USERNAME'] = {username!r} is not an object "
                        "id.",
                        hint="Azure Redis expects the identity's object (principal) id, a GUID: az identity "
                        "show -n NAME -g GROUP --query principalId. Or leave USERNAME unset: the token's oid "
                        "is used.",
                        obj=obj,
                        id="django_azure_mi.W020",
                    )
                )
        elif backend.startswith("django_redis.") and "MANAGED_IDENTITY" in options:
            errors.append(
                checks.Error(
                    f"{obj}['OPTIONS']['MANAGED_IDENTITY'] is ignored: CONNECTION_FACTORY is not set.",
                    hint=f"Add 'CONNECTION_FACTORY': {FACTORY!r} to {obj}['OPTIONS'].",
                    obj=obj,
                    id="django_azure_mi.E024",
                )
            )
        elif "redis" in backend.lower() and not options.get("PASSWORD"):
            urls = [urlsplit(url) for url in split_locations(cache.get("LOCATION"))]
            if any((url.hostname or "").endswith(_AZURE_HOSTS) for url in urls) and not any(
                url.password for url in urls
            ):
                errors.append(
                    checks.Warning(
                        f"{obj} points at Azure Redis without a password or a managed identity.",
                        hint=f"Use BACKEND {BACKEND!r}, or django-redis with 'CONNECTION_FACTORY': "
                        f"{FACTORY!r}.",
                        obj=obj,
                        id="django_azure_mi.W021",
                    )
                )


def _client_fits_amr(cache: dict[str, Any]) -> bool:
    """A django-redis cache that is not on an Azure Managed Redis host, or whose CLIENT_CLASS is ours."""
    from django.utils.module_loading import import_string

    from ..options import split_locations
    from .auth import is_amr_host

    if not any(is_amr_host(url) for url in split_locations(cache.get("LOCATION"))):
        return True
    configured = (cache.get("OPTIONS") or {}).get("CLIENT_CLASS", "django_redis.client.DefaultClient")
    try:
        from .factory import EntraClient

        cls = import_string(configured) if isinstance(configured, str) else configured
        return isinstance(cls, type) and issubclass(cls, EntraClient)
    except ImportError:
        return True  # a missing class or django-redis is reported elsewhere


def _validate(backend: str, cache: dict[str, Any], obj: str) -> None:
    from ..options import split_locations
    from . import backend as builtin
    from . import factory

    if backend == BACKEND:
        builtin.validate(cache.get("LOCATION") or "", cache)  # options and LOCATION
        return
    options = dict(cache.get("OPTIONS") or {})
    settings = factory.validate(options, f"{obj}['OPTIONS']")
    for url in split_locations(cache.get("LOCATION")):
        factory.validate_url(url, options, settings)


# ----------------------------------------------------------------------------------------------- probe


def targets(selection: Selection) -> list[Target]:
    return [
        Target(NAME, alias, f"CACHES[{alias!r}]", probe)
        for alias in aliases("CACHES", "cache", selection, uses_ours)
    ]


def probe(result: Any, deep: bool) -> None:
    from django.core.cache import caches

    cache = caches[result.alias]
    auth, client = _client_of(cache)
    probe_client(result, auth, client, deep, f"CACHES[{result.alias!r}]")
    sharded = str(result.details.get("endpoint", "")).startswith(("OSS", "proxy"))
    client_class = type(getattr(cache, "client", None))
    if sharded and client_class.__module__.startswith("django_redis"):  # not ours (W023)
        result.details["advice"] = (
            f"CLIENT_CLASS {client_class.__name__} runs MULTI in set_many/delete_pattern, refused across "
            f"hash slots here: use {ENTRA_CLIENT}"
        )


def _client_of(cache: Any) -> tuple[Any, Any]:
    """(EntraAuth, redis.Redis) of a django-redis cache or of our Django built-in RedisCache: the auth
    object the cache's pools use, so its settings and re-AUTH counters are the live ones."""
    from . import RedisCache, get_auth

    if isinstance(cache, RedisCache):  # Django's built-in backend: passed to its pools
        client: Any = cache._cache
        return get_auth(client._pool_options["entra_settings"]), client.get_client(write=True)
    return cache.client.connection_factory.entra, cache.client.get_client(write=True)  # django-redis


def probe_client(result: Any, auth: Any, client: Any, deep: bool, where: Any, key_prefix: str = "") -> None:
    """A Redis client of ours (cache, Celery broker or results): identity, PING, ACL WHOAMI, probe key
    (under ``key_prefix``: Celery's, whose pool may serve that prefix's hash slot only)."""
    from redis.exceptions import ResponseError

    from ..diagnostics import attach
    from ..probes import PROBE_PREFIX, identity_facts

    entra = auth.settings
    result.identity = identity_facts(entra.scope, entra.client_id)
    oid = result.identity["oid"]
    if entra.username and oid and entra.username != oid:
        failure = diagnose_error(None, where, entra.username, oid)
        raise attach(RuntimeError(failure.diagnosis), failure)
    # this process's re-AUTH record (the status page of a long-running site)
    result.details.update(reauths=auth.reauths, reauth_failures=auth.reauth_failures)
    result.details["ping"] = bool(client.ping())
    try:
        result.details["user"] = _text(client.execute_command("ACL", "WHOAMI"))
    except ResponseError as exc:  # NOPERM with a Data Reader/Contributor policy, or a server without ACL
        result.details["user"] = f"(ACL WHOAMI refused: {str(exc)[:80]})"
    if deep:
        key = f"{key_prefix}{PROBE_PREFIX}:{uuid.uuid4().hex}"
        value = uuid.uuid4().hex
        client.set(key, value, ex=60)
        read = _text(client.get(key))
        client.delete(key)
        if read != value:
            raise RuntimeError("SET/GET of the probe key returned something else")
        result.details["set_get_del"] = True
        result.details["endpoint"] = endpoint_kind(client)


def endpoint_kind(client: Any) -> str:
    """What the Redis behind ``client`` is, as far as a client can tell (docs/azure-behaviour.md)."""
    import redis
    from redis.exceptions import ResponseError

    if isinstance(client, redis.RedisCluster):
        return f"OSS cluster, {len(client.get_primaries())} shards"  # type: ignore[no-untyped-call]
    try:
        info = _text(client.execute_command("CLUSTER", "INFO"))
    except ResponseError as exc:
        if "not allowed" in str(exc).lower():
            return "proxy endpoint (CLUSTER refused: Azure Managed Redis, Enterprise or Non-clustered policy)"
        return "one server (not clustered)"
    if "cluster_state:" not in info:
        return "one server (not clustered)"
    route = getattr(client.connection_pool, "route", None)  # a SlotPinnedPool (Celery)
    if route is None:
        return "cluster node"
    host, port = route.address()
    return f"OSS cluster, the node serving hash slot {route.slot} ({host}:{port})"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def summary(details: dict[str, Any]) -> str:
    steps = "PING, SET/GET/DEL" if details.get("set_get_del") else "PING"
    text = f"{steps} ok, ACL WHOAMI {details.get('user')}"
    if details.get("endpoint"):
        text += f"; {details['endpoint']}"
    if details.get("advice"):
        text += f"; {details['advice']}"
    return text


def provider(target: Target) -> Any:
    from django.conf import settings

    from .auth import OPTION, parse_options

    raw = (settings.CACHES[target.alias].get("OPTIONS") or {}).get(OPTION)
    return parse_options(raw, f"CACHES[{target.alias!r}]['OPTIONS']").provider


CHECK_IDS: Final = (
    CheckId("E020", "`CACHES[…]['OPTIONS']['MANAGED_IDENTITY']` malformed"),
    CheckId("E021", "credentials in `LOCATION` or `OPTIONS` (PASSWORD/USERNAME, password/username)"),
    CheckId(
        "E022",
        "no TLS, or TLS that does not verify the server (a TLS option value that is not a verifying "
        "one), to a non-loopback host",
    ),
    CheckId("E023", "a pool class that cannot re-AUTH"),
    CheckId("E024", "`MANAGED_IDENTITY` on django-redis without `CONNECTION_FACTORY` (ignored)"),
    CheckId("E025", "`EntraConnectionFactory` without django-redis installed"),
    CheckId(
        "E026",
        "the cluster switch (`OPTIONS['CLUSTER']`, `['cluster']`, Celery's `cluster` transport option) is "
        "not True, False or 'auto'",
    ),
    CheckId(
        "E027",
        "a database other than 0 in a Redis URL of an Azure Managed Redis host (it has database 0 only)",
    ),
    CheckId("W020", "`MANAGED_IDENTITY['USERNAME']` is not an object id (GUID)"),
    CheckId("W021", "an Azure Redis `LOCATION` without password that does not use our factory/backend"),
    CheckId("W022", "`MANAGED_IDENTITY['VERIFY_TLS'] = False`: the server is not verified"),
    CheckId(
        "W023",
        "django-redis on an Azure Managed Redis host with a CLIENT_CLASS that is not "
        "`django_azure_mi.cache.EntraClient` (MULTI across slots, no cluster client)",
    ),
)


def provision(plan: Any) -> None:
    """What Azure must have for it (``azure_setup``): .provision."""
    from .provision import provision as steps

    steps(plan, NAME, uses_ours)


SERVICE: Final = Service(
    name=NAME,
    check_ids=CHECK_IDS,
    title="Redis",
    extra="redis",
    scopes=SCOPES,
    check=check,
    targets=targets,
    summary=summary,
    diagnose=diagnose,
    provider=provider,
    arguments=(Argument("cache", "only this cache alias", setting="CACHES"),),
    provision=provision,
)
