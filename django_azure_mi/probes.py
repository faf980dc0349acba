"""Live probes of every configured service, shared by ``manage.py azure_check`` and the readiness view.

Each probe gets the service's token (reporting the identity from its claims: oid, tid, app id, name, expiry -
never the token), then talks to the service. Probes run in parallel daemon threads with a deadline, so a hung
server or identity endpoint turns into a failed result instead of a hung caller. A failure comes with a
diagnosis and a fix for the known cases.

``deep=True`` (azure_check) writes, reads and deletes probe data; ``deep=False`` (readiness) only reads:
Postgres ``select``, Redis ``PING``, the storage container's properties, the Key Vault token.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt

from . import conf, get_token_provider
from .checks import ENGINE, STORAGE_BACKEND, split_message, uses_our_cache

PROBE_PREFIX = "django-azure-mi-probe"


@dataclass
class Result:
    """One probed service. ``details`` are service facts; ``identity`` comes from the token's claims."""

    service: str  # "database" | "cache" | "storage" | "keyvault"
    alias: str
    ok: bool = False
    elapsed_ms: float = 0.0
    identity: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    diagnosis: str | None = None
    fix: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Target:
    service: str
    alias: str
    probe: Callable[[Result, bool], None]


def targets(
    *,
    databases: list[str] | None = None,
    caches: list[str] | None = None,
    storages: list[str] | None = None,
    keyvault: bool | None = None,
    secrets: list[str] | None = None,
) -> list[Target]:
    """What is configured to use a managed identity. ``None`` = all of that kind; ``[]`` = none."""
    from django.conf import settings

    found: list[Target] = []
    for alias, entry in (getattr(settings, "DATABASES", None) or {}).items():
        if entry.get("ENGINE") == ENGINE and (databases is None or alias in databases):
            found.append(Target("database", alias, _probe_database))
    for alias, entry in (getattr(settings, "CACHES", None) or {}).items():
        if uses_our_cache(entry) and (caches is None or alias in caches):
            found.append(Target("cache", alias, _probe_cache))
    for alias, entry in (getattr(settings, "STORAGES", None) or {}).items():
        if entry.get("BACKEND") == STORAGE_BACKEND and (storages is None or alias in storages):
            found.append(Target("storage", alias, _probe_storage))
    from . import keyvault as kv

    vault = kv.vault_url() if keyvault is not False else None
    if vault:
        probe = functools.partial(_probe_keyvault, names=secrets) if secrets else _probe_keyvault
        found.append(Target("keyvault", vault, probe))
    return found


def run(selected: list[Target], *, timeout: float = 20.0, deep: bool = True) -> list[Result]:
    """Probe ``selected`` in parallel; every result is back within ``timeout`` seconds.

    A probe still stuck from an earlier run (a server that accepts but never answers) is not started again:
    its result says so, and repeated readiness checks cannot pile up threads."""
    results = [Result(t.service, t.alias) for t in selected]
    threads: list[threading.Thread | None] = []
    for target, result in zip(selected, results, strict=True):
        key = (target.service, target.alias)
        with _inflight_lock:
            stuck = _inflight.get(key)
            if stuck is not None and stuck[0].is_alive():
                threads.append(None)
                result.error = f"the previous probe has not answered for {time.monotonic() - stuck[1]:.0f} s"
                result.diagnosis, result.fix = _diagnose(result.service, result.alias, "no answer within")
                continue
            thread = threading.Thread(
                target=_guarded, args=(target, result, deep), name=f"probe-{target.service}", daemon=True
            )
            _inflight[key] = (thread, time.monotonic())
        thread.start()
        threads.append(thread)
    deadline = time.monotonic() + timeout
    for started, result in zip(threads, results, strict=True):
        if started is None:
            continue
        started.join(max(0.0, deadline - time.monotonic()))
        if started.is_alive():
            result.ok = False
            result.elapsed_ms = timeout * 1000
            result.error = f"no answer within {timeout:g} s"
            result.diagnosis, result.fix = _diagnose(result.service, result.alias, result.error)
    # snapshots (with their own dicts): a probe thread that answers late cannot change them
    return [dataclasses.replace(r, identity=dict(r.identity), details=dict(r.details)) for r in results]


_inflight_lock = threading.Lock()
_inflight: dict[tuple[str, str], tuple[threading.Thread, float]] = {}


def reset() -> None:
    """Forget probes still running (tests: a hung probe of one test must not mark the next one's)."""
    with _inflight_lock:
        _inflight.clear()


def _guarded(target: Target, result: Result, deep: bool) -> None:
    started = time.monotonic()
    try:
        target.probe(result, deep)
        result.ok = True
    except Exception as exc:
        from .tokens import describe_error

        result.error = describe_error(exc, 600)
        check_id = getattr(exc, "check_id", None)
        if check_id:  # a SettingError: the same words as `manage.py check`
            problem, fix = split_message(str(exc))
            result.diagnosis = f"Misconfiguration (django_azure_mi.{check_id}): {problem}"
            result.fix = fix or "See `manage.py check`."
        else:
            result.diagnosis, result.fix = _diagnose(target.service, target.alias, result.error, result)
    finally:
        result.elapsed_ms = round((time.monotonic() - started) * 1000, 1)


# ---------------------------------------------------------------------------------------------- identity


def identity_facts(scope: str, client_id: str | None) -> dict[str, Any]:
    """Who the token for ``scope`` says we are - from its claims, without the token."""
    provider = get_token_provider(scope, client_id=client_id)
    token = provider.get_token(scope)
    claims = jwt.decode(token.token, options={"verify_signature": False})
    resource_id = str(claims.get("xms_mirid") or "")
    return {
        "credential": provider.identity,
        "scope": scope,
        "oid": claims.get("oid"),
        "tid": claims.get("tid"),
        "appid": claims.get("appid") or claims.get("azp"),
        "name": resource_id.rstrip("/").rsplit("/", 1)[-1] or None,
        "audience": claims.get("aud"),
        "expires_in_s": int(token.expires_on - time.time()),
    }


# ---------------------------------------------------------------------------------------------- probes


def _probe_database(result: Result, deep: bool) -> None:
    from django.db import connections

    from .backends.postgresql.base import managed_identity

    connection = connections[result.alias]
    identity = managed_identity(connection.settings_dict, result.alias)
    if identity is not None:
        result.identity = identity_facts(identity.scope, identity.client_id)
    result.details["user"] = connection.settings_dict.get("USER")
    try:
        with connection.cursor() as cursor:
            cursor.execute("select current_user, version()")
            user, version = cursor.fetchone()
            cursor.execute("select ssl, version from pg_stat_ssl where pid = pg_backend_pid()")
            row = cursor.fetchone()
    finally:
        connection.close()
    result.details.update(
        current_user=user,
        server=" ".join(str(version).split()[:2]),
        tls=bool(row and row[0]),
        tls_version=row[1] if row and row[0] else None,
    )
    if identity is not None and not result.details["tls"] and not conf.is_loopback(identity.host):
        raise RuntimeError("connected without TLS")


def _probe_cache(result: Result, deep: bool) -> None:
    from django.core.cache import caches
    from redis.exceptions import ResponseError

    from .cache import OPTION

    auth, client = _redis(caches[result.alias])
    entra = auth.settings
    result.identity = identity_facts(entra.scope, entra.client_id)
    if entra.username and result.identity["oid"] and entra.username != result.identity["oid"]:
        raise RuntimeError(
            f"OPTIONS['{OPTION}']['USERNAME'] is {entra.username!r} but the token's object id is "
            f"{result.identity['oid']!r} (Redis would answer WRONGPASS)"
        )
    # this process's re-AUTH record (the status page of a long-running site)
    result.details.update(reauths=auth.reauths, reauth_failures=auth.reauth_failures)
    result.details["ping"] = bool(client.ping())
    try:
        result.details["user"] = _text(client.execute_command("ACL", "WHOAMI"))
    except ResponseError as exc:  # NOPERM with a Data Reader/Contributor policy, or a server without ACL
        result.details["user"] = f"(ACL WHOAMI refused: {str(exc)[:80]})"
    if deep:
        key = f"{PROBE_PREFIX}:{uuid.uuid4().hex}"
        value = uuid.uuid4().hex
        client.set(key, value, ex=60)
        read = _text(client.get(key))
        client.delete(key)
        if read != value:
            raise RuntimeError("SET/GET of the probe key returned something else")
        result.details["set_get_del"] = True


def _redis(cache: Any) -> tuple[Any, Any]:
    """(EntraAuth, redis.Redis) of a django-redis cache or of our Django built-in RedisCache: the auth
    object the cache's pools use, so its settings and re-AUTH counters are the live ones."""
    from .cache import RedisCache

    if isinstance(cache, RedisCache):  # Django's built-in backend: passed to its pools
        client: Any = cache._cache
        return client._pool_options["entra"], client.get_client(write=True)
    return cache.client.connection_factory.entra, cache.client.get_client(write=True)  # django-redis


def _probe_storage(result: Result, deep: bool) -> None:
    from django.core.files.base import ContentFile
    from django.core.files.storage import storages

    storage: Any = storages[result.alias]
    result.identity = identity_facts(storage.scope, storage.client_id)
    result.details.update(account_url=storage.account_url, container=storage.azure_container)
    if not deep:
        storage.client.get_container_properties()
        return
    name = f"{PROBE_PREFIX}/{uuid.uuid4().hex}.txt"
    payload = uuid.uuid4().hex.encode()
    saved = storage.save(name, ContentFile(payload))
    try:
        with storage.open(saved) as fh:
            if fh.read() != payload:
                raise RuntimeError("the probe blob read back differs from what was written")
        result.details["write_read"] = True
        if storage.expiration_secs:
            import requests

            verify = (storage.client_options or {}).get("connection_verify", True)
            response = requests.get(storage.url(saved), timeout=10, verify=verify)
            if response.status_code != 200 or response.content != payload:
                raise RuntimeError(f"the signed URL answered {response.status_code}")
            result.details["signed_url"] = True
    finally:
        storage.delete(saved)
    result.details["delete"] = True


def _probe_keyvault(result: Result, deep: bool, names: list[str] | None = None) -> None:
    """The vault token, then the metadata of ``names`` (default: the secrets settings.py read)."""
    from . import keyvault

    config = conf.get_config()
    result.identity = identity_facts(config.cloud.keyvault_scope, None)
    names = names or keyvault.secrets_read()
    result.details["secrets"] = []
    for name in names if deep else names[:1]:
        info = keyvault.secret_info(name, result.alias, timeout=10)
        result.details["secrets"].append(dataclasses.asdict(info))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# ---------------------------------------------------------------------------------------------- diagnosis

_IDENTITY_DOWN = re.compile(
    r"connection refused|failed to establish|max retries|timed out|no token|unavailable|"
    r"name or service not known|network is unreachable",
    re.I,
)


def _diagnose(service: str, alias: str, error: str, result: Result | None = None) -> tuple[str, str]:
    """(diagnosis, fix) for an error text."""
    text = error.lower()
    where = {
        "database": f"DATABASES[{alias!r}]",
        "cache": f"CACHES[{alias!r}]",
        "storage": f"STORAGES[{alias!r}]",
        "keyvault": "AZURE_KEY_VAULT_URL",
    }[service]
    got_token = bool(result and result.identity)
    if not got_token and ("token" in text or "identity" in text or _IDENTITY_DOWN.search(text)):
        if "identity not found" in text or "400" in text:
            return (
                "The identity endpoint does not know this identity.",
                "Assign the user-assigned identity to this app (az webapp identity assign / az containerapp "
                "identity assign --user-assigned <id>) and set AZURE_MANAGED_IDENTITY['CLIENT_ID'] to its "
                "client id.",
            )
        return (
            "No token: the managed identity endpoint (IMDS) is unreachable or refused - this process is "
            "probably not running on Azure, or the app has no managed identity.",
            "On Azure: enable the identity (az webapp identity assign). Locally: set "
            "AZURE_MANAGED_IDENTITY = {'CREDENTIAL': 'default'} and run `az login`.",
        )
    if "no answer within" in text:
        return (
            f"{service} did not answer in time.",
            f"Check the host/port in {where}, the network path (VNet, private endpoint, firewall rules).",
        )
    if service == "database":
        if re.search(r'role "[^"]*" does not exist', text) or "password authentication failed" in text:
            name = result.identity.get("name") if result else None
            return (
                f"Postgres refused the token for USER {(result.details.get('user') if result else None)!r}"
                + (f" (the identity's name is {name!r})" if name else "")
                + ".",
                f"{where}['USER'] must be the identity's Postgres role exactly as created with "
                "pgaadauth_create_principal('<identity name>', false, false) by a Microsoft Entra admin.",
            )
        if "ssl" in text or "tls" in text or "no encryption" in text:
            return (
                "TLS problem between Django and Postgres.",
                f"Azure requires TLS: keep {where}['OPTIONS']['sslmode'] at 'require' or 'verify-full' "
                "(with 'sslrootcert').",
            )
        if "expired" in text:
            return ("The token expired before Postgres checked it.", "Check the machine's clock (NTP).")
    if service == "cache":
        if "wrongpass" in text or "object id" in text:
            return (
                "Redis refused the identity: USERNAME is not the identity's object id, or it has no access "
                "policy.",
                f"Leave {where}['OPTIONS']['MANAGED_IDENTITY']['USERNAME'] unset (the token's oid is "
                "used) or set it to the oid shown above, and give that oid an access policy: az redis "
                "access-policy-assignment create --object-id <oid> --access-policy-name 'Data Owner' ...",
            )
        if "ssl" in text or "tls" in text or "connection closed" in text or "reset by peer" in text:
            return (
                "TLS problem between Django and Redis.",
                f"Use rediss:// in {where}['LOCATION'] (port 6380 for Azure Cache for Redis, 10000 for "
                "Azure Managed Redis).",
            )
    if service == "storage":
        if "authenticationfailed" in text or "401" in text:
            return (
                "Blob Storage rejected the token (audience/scope, tenant or clock).",
                f"Check {where}['OPTIONS']['managed_identity']['scope'] and AZURE_MANAGED_IDENTITY['CLOUD'].",
            )
        if "403" in text:  # AuthorizationPermissionMismatch / AuthorizationFailure
            from .storage import ROLES

            return ("The identity has no data role on the storage account.", ROLES)
        if "containernotfound" in text or ("container" in text and "not exist" in text):
            return (
                "The container does not exist.",
                "Create it: az storage container create --auth-mode login ...",
            )
    if service == "keyvault" and "does not exist" in text:
        return (
            "The secret does not exist in this vault.",
            "az keyvault secret set --vault-name ... --name ...",
        )
    if service == "keyvault" and "403" in text:
        return (
            "The identity may not read secrets in this vault.",
            "Grant 'Key Vault Secrets User' to the identity (az role assignment create ...).",
        )
    if "ssl" in text or "certificate" in text:
        return ("TLS handshake failed.", "Check the server certificate and the CA bundle the client trusts.")
    if "refused" in text or "resolve" in text or "unreachable" in text:
        return (f"{service} is unreachable.", f"Check the host and port in {where} and the network path.")
    return (f"The {service} probe failed.", "See the error above.")
