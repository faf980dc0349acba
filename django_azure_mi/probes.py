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
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import diagnostics, get_token_provider, runtime
from .checks import ENGINE, STORAGE_BACKEND, uses_our_cache
from .core.errors import describe_error
from .options import is_remote

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
    celery: bool | None = None,
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
    if celery is not False:
        found.extend(Target(service, where, probe) for service, where, probe in _celery_targets())
    from . import keyvault as kv

    vault = kv.vault_url() if keyvault is not False else None
    if vault:
        probe = functools.partial(_probe_keyvault, names=secrets) if secrets else _probe_keyvault
        found.append(Target("keyvault", vault, probe))
    return found


class InFlight:
    """Probe threads still running, by (service, alias): a runtime component."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.threads: dict[tuple[str, str], tuple[threading.Thread, float]] = {}

    def close(self) -> None:  # a hung probe of one runtime must not mark the next one's
        with self.lock:
            self.threads.clear()

    def after_fork(self) -> None:
        self.lock = threading.Lock()
        self.threads.clear()


def start(
    selected: list[Target], *, timeout: float, deep: bool, done: Callable[[list[Result]], None]
) -> threading.Thread:
    """:func:`run` in the background (warm-up); ``done(results)`` when it returns."""
    thread = threading.Thread(
        target=lambda: done(run(selected, timeout=timeout, deep=deep)), name="probes", daemon=True
    )
    thread.start()
    return thread


def run(selected: list[Target], *, timeout: float = 20.0, deep: bool = True) -> list[Result]:
    """Probe ``selected`` in parallel; every result is back within ``timeout`` seconds.

    A probe still stuck from an earlier run (a server that accepts but never answers) is not started again:
    its result says so, and repeated readiness checks cannot pile up threads."""
    inflight = runtime.get().component("probes", InFlight)
    results = [Result(t.service, t.alias) for t in selected]
    threads: list[threading.Thread | None] = []
    for target, result in zip(selected, results, strict=True):
        key = (target.service, target.alias)
        with inflight.lock:
            stuck = inflight.threads.get(key)
            if stuck is not None and stuck[0].is_alive():
                threads.append(None)
                result.error = f"the previous probe has not answered for {time.monotonic() - stuck[1]:.0f} s"
                _set_failure(result, diagnostics.timeout_failure(result.service, _where(result), timeout))
                continue
            thread = threading.Thread(
                target=_guarded, args=(target, result, deep), name=f"probe-{target.service}", daemon=True
            )
            inflight.threads[key] = (thread, time.monotonic())
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
            _set_failure(result, diagnostics.timeout_failure(result.service, _where(result), timeout))
    # snapshots (with their own dicts): a probe thread that answers late cannot change them
    return [dataclasses.replace(r, identity=dict(r.identity), details=dict(r.details)) for r in results]


def _where(result: Result) -> str:
    return {
        "database": f"DATABASES[{result.alias!r}]",
        "cache": f"CACHES[{result.alias!r}]",
        "storage": f"STORAGES[{result.alias!r}]",
        "celery-broker": "CELERY_BROKER_URL",
        "celery-results": "CELERY_RESULT_BACKEND",
    }.get(result.service, "AZURE_KEY_VAULT_URL")


def _set_failure(result: Result, failure: diagnostics.ServiceFailure) -> None:
    result.diagnosis, result.fix = failure.diagnosis, failure.fix


def _guarded(target: Target, result: Result, deep: bool) -> None:
    started = time.monotonic()
    try:
        target.probe(result, deep)
        result.ok = True
    except Exception as exc:
        result.error = describe_error(exc, 600)
        _set_failure(result, diagnostics.diagnose(target.service, exc, _where(result)))
    finally:
        result.elapsed_ms = round((time.monotonic() - started) * 1000, 1)


# ---------------------------------------------------------------------------------------------- identity


def identity_facts(scope: str, client_id: str | None) -> dict[str, Any]:
    """Who the token for ``scope`` says we are - from its claims, without the token."""
    provider = get_token_provider(scope, client_id=client_id)
    token = provider.current()
    claims = token.claims
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

    from .backends.postgresql.options import targets

    connection: Any = connections[result.alias]
    identity = connection.managed_identity
    if identity is not None:
        result.identity = identity_facts(identity.scope, identity.client_id)
    result.details["user"] = connection.settings_dict.get("USER")
    try:
        with connection.cursor() as cursor:
            cursor.execute("select current_user, version()")
            user, version = cursor.fetchone()
            tls, tls_version = _client_tls(connection.connection)
    finally:
        connection.close()
    result.details.update(
        current_user=user, server=" ".join(str(version).split()[:2]), tls=tls, tls_version=tls_version
    )
    if (
        identity is not None
        and not result.details["tls"]
        and is_remote(targets(connection.settings_dict, os.environ))
    ):
        raise diagnostics.attach(
            RuntimeError("connected without TLS"), diagnostics.postgres_tls(identity.alias)
        )


def _client_tls(raw: Any) -> tuple[bool, str | None]:
    """Does this driver connection use TLS, and which version? Asked of the client (libpq), which sees the
    link it signed in over; the server's pg_stat_ssl would describe a pooler's or gateway's link instead."""
    pgconn = getattr(raw, "pgconn", None)  # psycopg 3 (its PGconn has no ssl_attribute: no version)
    if pgconn is not None:
        return bool(pgconn.ssl_in_use), None
    info = raw.info  # psycopg2
    used = bool(info.ssl_in_use)
    return used, info.ssl_attribute("protocol") if used else None


def _probe_cache(result: Result, deep: bool) -> None:
    from django.core.cache import caches

    auth, client = _redis(caches[result.alias])
    _probe_redis(result, auth, client, deep, _where(result))


def _probe_redis(result: Result, auth: Any, client: Any, deep: bool, where: Any) -> None:
    """A Redis client of ours (cache, Celery broker or results): identity, PING, ACL WHOAMI, probe key."""
    from redis.exceptions import ResponseError

    entra = auth.settings
    result.identity = identity_facts(entra.scope, entra.client_id)
    oid = result.identity["oid"]
    if entra.username and oid and entra.username != oid:
        failure = diagnostics.diagnose_redis(None, where, entra.username, oid)
        raise diagnostics.attach(RuntimeError(failure.diagnosis), failure)
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


def _celery_targets() -> list[tuple[str, str, Callable[[Result, bool], None]]]:
    """Celery's broker and result backend, when Django's settings (namespace CELERY, as Celery's Django
    guide sets it up) use our transport and backend."""
    from django.conf import settings

    from .celery import BACKEND, TRANSPORT

    found: list[tuple[str, str, Callable[[Result, bool], None]]] = []
    if getattr(settings, "CELERY_BROKER_TRANSPORT", None) == TRANSPORT:
        found.append(("celery-broker", "CELERY_BROKER_URL", _probe_celery_broker))
    backend = getattr(settings, "CELERY_RESULT_BACKEND", None)
    if isinstance(backend, str) and backend.startswith(f"{BACKEND}+"):
        found.append(("celery-results", "CELERY_RESULT_BACKEND", _probe_celery_results))
    if found:
        # Celery's package loads its names lazily, and two probe threads importing it at once can see it
        # half-built ("cannot import name 'Celery'"): import it here, before the probes run in parallel.
        from celery import Celery  # noqa: F401
    return found


def _celery_app() -> Any:
    from celery import Celery

    app = Celery("azure_check", set_as_current=False)
    app.config_from_object("django.conf:settings", namespace="CELERY")
    return app


def _probe_celery_broker(result: Result, deep: bool) -> None:
    from .cache import get_auth

    with _celery_app().connection_for_write() as connection:
        connection.ensure_connection(max_retries=1)
        channel = connection.default_channel
        settings = connection.transport.entra_settings
        client = channel.Client(connection_pool=channel.pool)
        result.details["url"] = connection.as_uri()
        _probe_redis(result, get_auth(settings), client, deep, settings)


def _probe_celery_results(result: Result, deep: bool) -> None:
    from .cache import get_auth

    backend = _celery_app().backend
    settings = backend.entra_settings
    _probe_redis(result, get_auth(settings), backend.client, deep, settings)


def _redis(cache: Any) -> tuple[Any, Any]:
    """(EntraAuth, redis.Redis) of a django-redis cache or of our Django built-in RedisCache: the auth
    object the cache's pools use, so its settings and re-AUTH counters are the live ones."""
    from .cache import RedisCache, get_auth

    if isinstance(cache, RedisCache):  # Django's built-in backend: passed to its pools
        client: Any = cache._cache
        return get_auth(client._pool_options["entra_settings"]), client.get_client(write=True)
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
                raise diagnostics.attach(
                    RuntimeError(f"the signed URL answered {response.status_code}"),
                    signed_url_refused(response.status_code, response.text, result.alias),
                )
            result.details["signed_url"] = True
    finally:
        storage.delete(saved)
    result.details["delete"] = True


def signed_url_refused(status: int, body: str, alias: str) -> diagnostics.ServiceFailure:
    """The signed URL was refused although the identity just wrote, read and deleted the probe blob (so
    its token and data role are fine) and got a user delegation key: the SAS itself was rejected."""
    code = re.search(r"<Code>([^<]+)</Code>", body)
    detail = re.search(r"<AuthenticationErrorDetail>([^<]+)</AuthenticationErrorDetail>", body)
    facts = {"status": status, "code": code.group(1) if code else None}
    if detail:
        facts["detail"] = detail.group(1)[:200]
    return diagnostics.ServiceFailure(
        "signed-url-refused",
        f"Blob Storage refused the signed URL ({status} {facts['code'] or ''}) although the identity wrote, "
        "read and deleted the probe blob with its token: the user delegation SAS was rejected, not the "
        "identity's data role.",
        f"Compare the server's and this machine's clocks (keys start 15 minutes in the past), and check "
        f"STORAGES[{alias!r}]['OPTIONS'] (account_name must be the account the key belongs to). Against "
        "Azurite: an Azurite older than the storage SDK's service version refuses its SAS with 403; install "
        "the pinned one (npm install azurite@3.37.0).",
        facts,
    )


def _probe_keyvault(result: Result, deep: bool, names: list[str] | None = None) -> None:
    """The vault token, then the metadata of ``names`` (default: the secrets settings.py read)."""
    from . import keyvault

    config = runtime.get().config
    result.identity = identity_facts(config.cloud.keyvault_scope, None)
    names = names or keyvault.secrets_read()
    result.details["secrets"] = []
    for name in names if deep else names[:1]:
        info = keyvault.secret_info(name, result.alias, timeout=10)
        result.details["secrets"].append(dataclasses.asdict(info))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
