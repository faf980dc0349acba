"""System checks (``manage.py check``, run by ``runserver``/``migrate`` too): static misconfiguration only,
no network. ``manage.py azure_check`` talks to the services.

The checks run the adapters' own validation, so a check and the error raised at runtime always agree; each
:class:`~django_azure_mi.diagnostics.SettingError` carries its id. The ids, with what each means, are in
:mod:`django_azure_mi.checkids` (the README's table is generated from it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from . import conf
from .core.credentials import KINDS, IdentityKey, check_workload_environment, import_factory
from .core.errors import Problem
from .core.filecache import cache_dir_state, check_cache_dir
from .diagnostics import setting_errors
from .options import scope_owner, split_locations

ENGINE = "django_azure_mi.backends.postgresql"
CACHE_BACKEND = "django_azure_mi.cache.RedisCache"
CACHE_FACTORY = "django_azure_mi.cache.EntraConnectionFactory"
STORAGE_BACKEND = "django_azure_mi.storage.AzureManagedIdentityStorage"
_AZURE_REDIS = (".redis.cache.windows.net", ".redis.azure.net", ".redis.cache.usgovcloudapi.net",
                ".redis.cache.chinacloudapi.cn")  # fmt: skip


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Every static check (registered by ``apps.py`` under the ``django_azure_mi`` tag)."""
    from django.conf import settings

    errors: list[checks.CheckMessage] = []
    config = _run(errors, "AZURE_MANAGED_IDENTITY", lambda: conf.build_config(conf.read_setting(settings)))
    if config is None:
        return errors  # every adapter check would repeat the same error
    _run(errors, "AZURE_MANAGED_IDENTITY['CREDENTIAL']", _check_credential, config)
    if config.token_cache_dir:
        obj = "AZURE_MANAGED_IDENTITY['TOKEN_CACHE_DIR']"
        before = len(errors)
        _run(errors, obj, check_cache_dir, config.token_cache_dir)
        why = cache_dir_state(config.token_cache_dir) if len(errors) == before else None
        if why is not None:
            errors.append(
                checks.Warning(
                    f"{obj} = {config.token_cache_dir!r} cannot be written: {why}. Each process keeps its "
                    "tokens in memory only (one identity request per process, not per host).",
                    hint="Point it at a writable directory (a tmpfs or emptyDir volume on a read-only "
                    "container), or remove the setting.",
                    obj=obj,
                    id="django_azure_mi.W007",
                )
            )
    for alias, database in (getattr(settings, "DATABASES", None) or {}).items():
        _check_database(errors, alias, database)
    for alias, cache in (getattr(settings, "CACHES", None) or {}).items():
        _check_cache(errors, alias, cache)
    for alias, storage in (getattr(settings, "STORAGES", None) or {}).items():
        _check_storage(errors, alias, storage)
    from . import keyvault

    url = keyvault.vault_url()
    if url:
        _run(errors, keyvault.VAULT_URL_ENV, keyvault.check_url, url)
    return errors


def _run(errors: list[checks.CheckMessage], obj: str, check: Callable[..., Any], *args: Any) -> Any:
    """Call ``check``; turn a SettingError (or a missing extra) into a check message."""
    try:
        with setting_errors():
            return check(*args)
    except ImportError as exc:
        errors.append(
            checks.Error(
                f"{obj} needs a package that is not installed ({exc}).",
                hint="pip install 'django-azure-mi[all]' (or the extra for this service: postgres, redis, "
                "storage, keyvault).",
                obj=obj,
                id="django_azure_mi.E006",
            )
        )
    except ImproperlyConfigured as exc:
        problem = getattr(exc, "problem", None)
        if not isinstance(problem, Problem):  # Django's own, e.g. pooling without psycopg 3
            problem = Problem("E000", str(exc))
        errors.append(
            checks.Error(
                problem.problem, hint=problem.fix or None, obj=obj, id=f"django_azure_mi.{problem.check_id}"
            )
        )
    return None


def _check_credential(config: conf.Config) -> None:
    """The environment a built-in credential needs, or that a custom factory imports. Nothing is built
    and a custom factory is not called: it may do anything."""
    key = IdentityKey(config.credential, config.client_id, config.cloud.authority_host)
    if key.credential in KINDS:
        check_workload_environment(key)
    else:
        import_factory(key.credential)


def _check_database(errors: list[checks.CheckMessage], alias: str, database: dict[str, Any]) -> None:
    engine = database.get("ENGINE", "")
    obj = f"DATABASES[{alias!r}]"
    if engine == ENGINE:
        _run(errors, obj, _validate_database, alias, database)
        identity = (database.get("OPTIONS") or {}).get("managed_identity")
        _warn_unverified(errors, obj, identity, "verify_tls", "W011")
        _warn_foreign_scope(errors, obj, identity, "scope", "postgres")
    elif engine.endswith("postgresql") and not database.get("PASSWORD"):
        host = str(database.get("HOST") or "")
        if host.endswith((".postgres.database.azure.com", ".postgres.database.usgovcloudapi.net")):
            errors.append(
                checks.Warning(
                    f"{obj} points at Azure Database for PostgreSQL ({host}) without a PASSWORD, with "
                    f"ENGINE {engine!r}.",
                    hint=f"To sign in with the managed identity, set ENGINE to {ENGINE!r}.",
                    obj=obj,
                    id="django_azure_mi.W010",
                )
            )


def _validate_database(alias: str, database: dict[str, Any]) -> None:
    from .backends.postgresql.options import managed_identity

    managed_identity(database, alias)


def _warn_foreign_scope(
    errors: list[checks.CheckMessage], obj: str, identity_options: Any, key: str, service: str
) -> None:
    """A scope that is another service's default (a Storage scope on a database, ...): its tokens will be
    refused. A warning, not an error: a custom audience may be meant (and the refusal is diagnosed)."""
    scope = identity_options.get(key) if isinstance(identity_options, dict) else None
    owner = scope_owner(scope)
    if owner is not None and owner != service:
        errors.append(
            checks.Warning(
                f"{obj}: the {key} {scope!r} is the scope of {owner}, not of {service}.",
                hint=f"The service will refuse its tokens. Remove {key} (the cloud's default scope applies).",
                obj=obj,
                id="django_azure_mi.W005",
            )
        )


def _warn_unverified(
    errors: list[checks.CheckMessage], obj: str, identity_options: Any, key: str, check_id: str
) -> None:
    """The TLS opt-out (``verify_tls`` / ``VERIFY_TLS`` = False) of one service, as a warning."""
    if not isinstance(identity_options, dict) or identity_options.get(key) is not False:
        return
    errors.append(
        checks.Warning(
            f"{obj} sends the access token without verifying the server ({key}=False).",
            hint="Anyone who can impersonate the server (DNS, a proxy, a hostile network) gets a token valid "
            f"for everything this identity may reach. Remove {key}=False and the option that turns "
            "verification off (sslmode require/verify-ca, ssl_cert_reqs/ssl_check_hostname, "
            "connection_verify): Azure's certificates verify against the default trust store.",
            obj=obj,
            id=f"django_azure_mi.{check_id}",
        )
    )


def uses_our_cache(cache: dict[str, Any]) -> bool:
    """Does this ``CACHES`` entry sign in through django-azure-mi (our backend, or django-redis with our
    connection factory)?"""
    backend = cache.get("BACKEND", "")
    factory = (cache.get("OPTIONS") or {}).get("CONNECTION_FACTORY")
    return bool(
        backend == CACHE_BACKEND or (backend.startswith("django_redis.") and factory == CACHE_FACTORY)
    )


def _check_cache(errors: list[checks.CheckMessage], alias: str, cache: dict[str, Any]) -> None:
    backend = cache.get("BACKEND", "")
    options = cache.get("OPTIONS") or {}
    obj = f"CACHES[{alias!r}]"
    if uses_our_cache(cache):
        _run(errors, obj, _validate_cache, backend, cache, obj)
        _warn_unverified(errors, obj, options.get("MANAGED_IDENTITY"), "VERIFY_TLS", "W022")
        _warn_foreign_scope(errors, obj, options.get("MANAGED_IDENTITY"), "SCOPE", "redis")
        identity = options.get("MANAGED_IDENTITY")
        username = identity.get("USERNAME") if isinstance(identity, dict) else None
        if isinstance(username, str) and username and not conf.GUID.match(username):
            errors.append(
                checks.Warning(
                    f"{obj}['OPTIONS']['MANAGED_IDENTITY']['USERNAME'] = {username!r} is not an object id.",
                    hint="Azure Redis expects the identity's object (principal) id, a GUID: az identity show "
                    "-n NAME -g GROUP --query principalId. Or leave USERNAME unset: the token's oid is used.",
                    obj=obj,
                    id="django_azure_mi.W020",
                )
            )
    elif backend.startswith("django_redis.") and "MANAGED_IDENTITY" in options:
        errors.append(
            checks.Error(
                f"{obj}['OPTIONS']['MANAGED_IDENTITY'] is ignored: CONNECTION_FACTORY is not set.",
                hint=f"Add 'CONNECTION_FACTORY': {CACHE_FACTORY!r} to {obj}['OPTIONS'].",
                obj=obj,
                id="django_azure_mi.E024",
            )
        )
    elif "redis" in backend.lower() and not options.get("PASSWORD"):
        urls = [urlsplit(url) for url in split_locations(cache.get("LOCATION"))]
        if any((url.hostname or "").endswith(_AZURE_REDIS) for url in urls) and not any(
            url.password for url in urls
        ):
            errors.append(
                checks.Warning(
                    f"{obj} points at Azure Redis without a password or a managed identity.",
                    hint=f"Use BACKEND {CACHE_BACKEND!r}, or django-redis with 'CONNECTION_FACTORY': "
                    f"{CACHE_FACTORY!r}.",
                    obj=obj,
                    id="django_azure_mi.W021",
                )
            )


def _validate_cache(backend: str, cache: dict[str, Any], obj: str) -> None:
    from .cache import backend as builtin
    from .cache import factory

    if backend == CACHE_BACKEND:
        builtin.validate(cache.get("LOCATION") or "", cache)  # options and LOCATION
        return
    options = dict(cache.get("OPTIONS") or {})
    settings = factory.validate(options, f"{obj}['OPTIONS']")
    for url in split_locations(cache.get("LOCATION")):
        factory.validate_url(url, options, settings)


def _check_storage(errors: list[checks.CheckMessage], alias: str, storage: dict[str, Any]) -> None:
    if storage.get("BACKEND") == STORAGE_BACKEND:
        obj = f"STORAGES[{alias!r}]"
        options = storage.get("OPTIONS") or {}
        _run(errors, obj, _validate_storage, options)
        _warn_unverified(errors, obj, options.get("managed_identity"), "verify_tls", "W032")
        _warn_foreign_scope(errors, obj, options.get("managed_identity"), "scope", "storage")


def _validate_storage(options: dict[str, Any]) -> None:
    from .storage import AzureManagedIdentityStorage

    AzureManagedIdentityStorage(**options)  # validation only: no credential, no request
