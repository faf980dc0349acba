"""Settings: ``settings.AZURE_MANAGED_IDENTITY`` (every key optional) plus environment defaults.

Read once and cached; Django's ``setting_changed`` signal (``override_settings``) clears the cache.
Works without Django settings configured too (defaults + environment), so the token core can be used
from plain scripts.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import threading
from dataclasses import dataclass
from typing import Any, Final

from django.core.exceptions import ImproperlyConfigured

SETTING: Final = "AZURE_MANAGED_IDENTITY"

CREDENTIAL_KINDS: Final = ("managed_identity", "workload_identity", "default")


@dataclass(frozen=True)
class Cloud:
    """Default scopes and hosts of one Azure cloud."""

    name: str
    authority_host: str
    postgres_scope: str
    redis_scope: str
    storage_scope: str
    keyvault_scope: str
    storage_suffix: str  # blob endpoint: https://{account}.blob.{storage_suffix}


CLOUDS: Final[dict[str, Cloud]] = {
    "public": Cloud(
        name="public",
        authority_host="login.microsoftonline.com",
        postgres_scope="https://ossrdbms-aad.database.windows.net/.default",
        redis_scope="https://redis.azure.com/.default",
        storage_scope="https://storage.azure.com/.default",
        keyvault_scope="https://vault.azure.net/.default",
        storage_suffix="core.windows.net",
    ),
    "usgovernment": Cloud(
        name="usgovernment",
        authority_host="login.microsoftonline.us",
        postgres_scope="https://ossrdbms-aad.database.usgovcloudapi.net/.default",
        redis_scope="https://redis.azure.us/.default",
        storage_scope="https://storage.azure.com/.default",
        keyvault_scope="https://vault.usgovcloudapi.net/.default",
        storage_suffix="core.usgovcloudapi.net",
    ),
    "china": Cloud(
        name="china",
        authority_host="login.chinacloudapi.cn",
        postgres_scope="https://ossrdbms-aad.database.chinacloudapi.cn/.default",
        redis_scope="https://redis.azure.cn/.default",
        storage_scope="https://storage.azure.com/.default",
        keyvault_scope="https://vault.azure.cn/.default",
        storage_suffix="core.chinacloudapi.cn",
    ),
}

DEFAULTS: Final[dict[str, Any]] = {
    "CREDENTIAL": "managed_identity",
    "CLIENT_ID": None,
    "CLOUD": "public",
    "REFRESH_MARGIN": 300,
    "TOKEN_CACHE_DIR": None,
    "TIMEOUT": 15,
}

GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_DOTTED = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+$")


@dataclass(frozen=True)
class Config:
    """The validated ``AZURE_MANAGED_IDENTITY`` setting."""

    credential: str
    client_id: str | None
    cloud: Cloud
    refresh_margin: float
    token_cache_dir: str | None
    timeout: float


class SettingError(ImproperlyConfigured):
    """A misconfiguration, with the id ``manage.py check`` reports it under (``django_azure_mi.E0xx``).
    The message names the setting and, after its first sentence, the fix."""

    def __init__(self, check_id: str, message: str) -> None:
        super().__init__(message)
        self.check_id = check_id


def _error(key: str, problem: str, fix: str) -> SettingError:
    return SettingError("E001", f"{SETTING}[{key!r}] {problem}. {fix}")


def validate_client_id(value: Any, where: str) -> str | None:
    """A client id is a GUID (the identity's *client id*, not its object id or resource id)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not GUID.match(value.strip()):
        raise SettingError(
            "E002",
            f"{where} must be the client id (a GUID like 00000000-0000-0000-0000-000000000000) of a "
            f"user-assigned managed identity, got {value!r}. Find it with "
            "`az identity show -n NAME -g GROUP --query clientId`, or leave it unset for the "
            "system-assigned identity.",
        )
    return value.strip()


def build_config(raw: Any, environ: os._Environ[str] | dict[str, str] | None = None) -> Config:
    """Validate a raw ``AZURE_MANAGED_IDENTITY`` value; raise ImproperlyConfigured naming key and fix."""
    env = os.environ if environ is None else environ
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SettingError(
            "E001",
            f"{SETTING} must be a dict, got {type(raw).__name__}. Example: "
            f'{SETTING} = {{"CREDENTIAL": "managed_identity"}}',
        )
    unknown = sorted(set(raw) - set(DEFAULTS), key=str)
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), DEFAULTS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise _error(key, "is not a known key", f"Allowed keys: {', '.join(DEFAULTS)}.{hint}")
    values = {**DEFAULTS, **raw}

    credential = values["CREDENTIAL"]
    if not isinstance(credential, str) or not (credential in CREDENTIAL_KINDS or _DOTTED.match(credential)):
        raise _error(
            "CREDENTIAL",
            f"is {credential!r}",
            f"Use one of {', '.join(map(repr, CREDENTIAL_KINDS))} or a dotted path to a zero-argument "
            "callable returning an azure.core TokenCredential.",
        )

    client_id = values["CLIENT_ID"]
    if client_id is None:
        client_id = env.get("AZURE_CLIENT_ID") or None
        where = "The AZURE_CLIENT_ID environment variable"
    else:
        where = f"{SETTING}['CLIENT_ID']"
    client_id = validate_client_id(client_id, where)

    cloud = values["CLOUD"]
    if cloud not in CLOUDS:
        raise _error("CLOUD", f"is {cloud!r}", f"Use one of {', '.join(map(repr, CLOUDS))}.")

    margin = values["REFRESH_MARGIN"]
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin <= 43200:
        raise _error(
            "REFRESH_MARGIN",
            f"is {margin!r}",
            "Use a number of seconds between 0 and 43200 (default 300): how long before expiry the "
            "token is refreshed in the background.",
        )

    cache_dir = values["TOKEN_CACHE_DIR"]
    if cache_dir is not None:
        if not isinstance(cache_dir, (str, os.PathLike)) or not os.fspath(cache_dir):
            raise _error(
                "TOKEN_CACHE_DIR",
                f"is {cache_dir!r}",
                "Use None (no sharing) or the path of a directory only this user can read, "
                'e.g. "/tmp/django-azure-mi".',
            )
        cache_dir = os.path.abspath(os.fspath(cache_dir))

    timeout = values["TIMEOUT"]
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 600:
        raise _error(
            "TIMEOUT",
            f"is {timeout!r}",
            "Use a number of seconds between 0 and 600 (default 15): the longest a caller waits for a "
            "token when none is cached, and the read timeout of each identity-endpoint request.",
        )

    return Config(
        credential=credential,
        client_id=client_id,
        cloud=CLOUDS[cloud],
        refresh_margin=float(margin),
        token_cache_dir=cache_dir,
        timeout=float(timeout),
    )


_lock = threading.Lock()
_cached: Config | None = None
_unconfigured: Config | None = None


def get_config() -> Config:
    """The process-wide configuration (validated once, cached until settings change)."""
    global _cached
    config = _cached
    if config is None:
        from django.conf import settings

        if not settings.configured:  # plain scripts, or settings.py itself running: defaults + env,
            global _unconfigured  # kept apart so the real setting is read once settings exist
            if _unconfigured is None:
                _unconfigured = build_config(None)
            return _unconfigured
        with _lock:
            if _cached is None:
                _cached = build_config(getattr(settings, SETTING, None))
            config = _cached
    return config


def clear_cache() -> None:
    global _cached, _unconfigured
    with _lock:
        _cached = _unconfigured = None


def on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    """``setting_changed`` receiver (connected in ``apps.py``): re-read the setting next time."""
    if setting == SETTING:
        clear_cache()


def is_loopback(host: str | None) -> bool:
    """True for hosts that never leave this machine: loopback names/addresses and Unix socket paths.
    Bearer tokens may travel without TLS only to these."""
    if not host:
        return True  # libpq/redis default: the local socket
    host = host.strip().strip("[]")
    if host.startswith("/") or host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def adapter_identity(
    options: dict[str, Any], service: str, where: str, keys: tuple[str, str] = ("client_id", "scope")
) -> tuple[str | None, str]:
    """An adapter's per-connection identity options: ``(client_id, scope)``, with the configured cloud's
    default scope for ``service`` ("postgres", "redis", "storage", "keyvault"). ``where`` names the option
    dict in errors, e.g. ``"DATABASES['default']['OPTIONS']['managed_identity']"``; ``keys`` its key names."""
    client_key, scope_key = keys
    client_id = validate_client_id(options.get(client_key), f"{where}['{client_key}']")
    default: str = getattr(get_config().cloud, f"{service}_scope")
    scope = options.get(scope_key) or default
    if not isinstance(scope, str) or not scope.startswith("https://"):
        raise SettingError(
            "E005",
            f"{where}['{scope_key}'] = {scope!r} is not a scope; the default for "
            f"AZURE_MANAGED_IDENTITY['CLOUD'] is {default!r}.",
        )
    return client_id, scope
