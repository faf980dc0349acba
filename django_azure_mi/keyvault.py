"""Secrets for settings.py: from Key Vault on Azure, from the environment or a ``.env`` file elsewhere.

    from django_azure_mi.keyvault import secret

    SECRET_KEY = secret("django-secret-key", env="DJANGO_SECRET_KEY")
    SENTRY_DSN = secret("sentry-dsn", default="")

With ``AZURE_KEY_VAULT_URL`` set (in the environment or the ``.env`` file), ``secret()`` reads the secret from
that vault with the app's managed identity (the same identity and token core as the database, cache and
storage adapters); without it, from the environment variable ``env`` (default: the name upper-cased with
``-`` → ``_``), then from the ``.env`` file. The same settings.py runs on Azure and on a laptop.

Values are cached per process. Errors name the secret, where it was looked for and the fix; values never
appear in errors, logs or reprs.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

from . import conf

if TYPE_CHECKING:
    from azure.keyvault.secrets import KeyVaultSecret, SecretClient

logger = logging.getLogger("django_azure_mi.keyvault")

VAULT_URL_ENV: Final = "AZURE_KEY_VAULT_URL"
_NAME = re.compile(r"^[0-9A-Za-z-]{1,127}$")


class _Missing:
    def __repr__(self) -> str:
        return "<required>"


MISSING: Final = _Missing()


class SecretError(ImproperlyConfigured):
    """A secret could not be read; the message names the secret, the source and the fix. ``check_id`` is set
    when the cause is static misconfiguration (``manage.py check`` reports it under that id)."""

    def __init__(self, message: str, check_id: str | None = None) -> None:
        super().__init__(message)
        self.check_id = check_id


@dataclass(frozen=True)
class SecretInfo:
    """What ``azure_check`` reports about a Key Vault secret: everything but the value."""

    name: str
    version: str | None
    enabled: bool | None
    updated: str | None
    content_type: str | None


def secret(
    name: str,
    *,
    env: str | None = None,
    default: str | _Missing = MISSING,
    version: str | None = None,
    vault_url: str | None = None,
    env_file: str | os.PathLike[str] | None = None,
) -> str:
    """The value of secret ``name`` (see the module docstring for where it is looked up).

    ``default`` is returned when the secret does not exist anywhere; without it a missing secret raises
    :class:`SecretError` (an ``ImproperlyConfigured``). ``vault_url`` overrides ``AZURE_KEY_VAULT_URL``;
    ``env_file`` defaults to ``.env`` in the current directory (pass ``BASE_DIR / ".env"`` to pin it); a
    missing file is skipped.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise SecretError(
            f"secret({name!r}): Key Vault secret names are 1-127 letters, digits and dashes "
            "(e.g. 'django-secret-key')."
        )
    env_name = env or name.upper().replace("-", "_")
    dotenv = _dotenv(env_file)
    url = vault_url or _configured_vault(env_file)
    key = (url or "", name, version, env_name, os.fspath(env_file) if env_file else None)
    with _lock:
        if key in _values:
            return _values[key]
    if url:
        value = _from_vault(url, name, version, default, _identity_setting())
    elif env_name in os.environ:
        value = os.environ[env_name]
    elif dotenv.get(env_name) is not None:
        value = str(dotenv[env_name])
    elif isinstance(default, str):
        value = default
    else:
        where = f" or the file {dotenv.path}" if dotenv.path else " (no .env file found)"
        raise SecretError(
            f"Secret {name!r} is not set: no {VAULT_URL_ENV} is configured, so it was looked up in the "
            f"environment variable {env_name}{where}. Set {env_name}, add it to .env, set {VAULT_URL_ENV} "
            f"to read it from Key Vault, or pass default=... to secret({name!r})."
        )
    with _lock:
        _values[key] = value
    return value


def secret_info(name: str, vault_url: str | None = None, timeout: float | None = None) -> SecretInfo:
    """Read secret ``name`` from the vault and describe it without its value (``azure_check``)."""
    url = vault_url or _configured_vault(None)
    if not url:
        raise SecretError(f"No Key Vault configured: set {VAULT_URL_ENV} to the vault's URL.")
    from azure.core.exceptions import ResourceNotFoundError

    try:
        found = _get(url, name, None, conf.get_config(), timeout)
    except ResourceNotFoundError:
        raise _not_found(url, name, None) from None
    props = found.properties
    return SecretInfo(
        name=name,
        version=props.version,
        enabled=props.enabled,
        updated=props.updated_on.isoformat() if props.updated_on else None,
        content_type=props.content_type,
    )


def secrets_read() -> list[str]:
    """Names of the secrets this process read from Key Vault (what ``azure_check`` probes)."""
    with _lock:
        return list(_read_names)


def vault_url() -> str | None:
    """The configured vault (``AZURE_KEY_VAULT_URL`` from the environment or ``.env``), or None."""
    return _configured_vault(None)


def _configured_vault(env_file: str | os.PathLike[str] | None) -> str | None:
    return os.environ.get(VAULT_URL_ENV) or _dotenv(env_file).get(VAULT_URL_ENV) or None


def clear_cache() -> None:
    """Forget cached values and clients (tests; after rotating a secret, restart the process instead)."""
    with _lock:
        _values.clear()
        _read_names.clear()
        _clients.clear()
        _dotenv_files.clear()


reset = clear_cache

# ---------------------------------------------------------------------------------------------- internals

_lock = threading.Lock()
_values: dict[tuple[Any, ...], str] = {}
_read_names: list[str] = []
_clients: dict[tuple[str, conf.Config, float | None], SecretClient] = {}


class _DotEnv(dict[str, str | None]):
    path: str | None = None


_dotenv_files: dict[str, _DotEnv] = {}


def _dotenv(env_file: str | os.PathLike[str] | None) -> _DotEnv:
    path = os.path.abspath(os.fspath(env_file) if env_file else ".env")
    with _lock:
        cached = _dotenv_files.get(path)
    if cached is not None:
        return cached
    values = _DotEnv()
    if os.path.isfile(path):
        from dotenv import dotenv_values

        values.update(dotenv_values(path))
        values.path = path  # a missing file is fine: on Azure there is none
    with _lock:
        _dotenv_files[path] = values
    return values


def _identity_setting() -> conf.Config:
    """The ``AZURE_MANAGED_IDENTITY`` to use: Django's settings once configured; while settings.py is
    still running, the value it has assigned so far (define it above the first ``secret()``)."""
    from django.conf import settings

    if settings.configured:
        return conf.get_config()
    frame = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame = frame.f_back  # type: ignore[assignment]
    raw = frame.f_globals.get(conf.SETTING) if frame is not None else None
    return conf.build_config(raw)


def _from_vault(
    url: str, name: str, version: str | None, default: str | _Missing, config: conf.Config
) -> str:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        found = _get(url, name, version, config, None)
    except ResourceNotFoundError:
        if isinstance(default, str):
            logger.info("Key Vault secret %r not in %s: using the default", name, url)
            return default
        raise _not_found(url, name, version) from None
    if found.value is None:
        raise SecretError(f"Key Vault secret {name!r} in {url} has no value.")
    logger.info("Read Key Vault secret %r (version %s) from %s", name, found.properties.version, url)
    with _lock:
        if name not in _read_names:
            _read_names.append(name)
    return found.value


def _not_found(url: str, name: str, version: str | None) -> SecretError:
    return SecretError(
        f"Key Vault secret {name!r} does not exist in {url}"
        + (f" (version {version})" if version else "")
        + f". Create it: az keyvault secret set --vault-name {_vault_name(url)} --name {name} "
        f"--file <file>, or pass default=... to secret({name!r})."
    )


def _get(
    url: str, name: str, version: str | None, config: conf.Config, timeout: float | None
) -> KeyVaultSecret:
    """One ``get_secret`` with our errors. ``timeout`` bounds the whole call (``azure_check``)."""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceNotFoundError,
        ServiceRequestError,
    )

    from .tokens import TokenUnavailableError, describe_error

    client = _client(url, config, timeout)
    identity = _identity_label(config)
    try:
        return client.get_secret(name, version)
    except ResourceNotFoundError:
        raise
    except TokenUnavailableError as exc:
        raise SecretError(f"Key Vault secret {name!r}: no token for {identity}: {exc}") from None
    except ClientAuthenticationError as exc:
        raise SecretError(
            f"Key Vault {url} refused the token of {identity} for secret {name!r} "
            f"({_reason(exc)}). Check that the vault is in the identity's tenant and that "
            f"AZURE_MANAGED_IDENTITY['CLOUD'] matches the vault's cloud."
        ) from None
    except HttpResponseError as exc:
        if exc.status_code == 403:
            raise SecretError(
                f"{identity} may not read secret {name!r} in {url} ({_reason(exc)}). Grant it the "
                "'Key Vault Secrets User' role: az role assignment create --role 'Key Vault Secrets User' "
                "--assignee <principal id> --scope $(az keyvault show -n "
                f"{_vault_name(url)} --query id -o tsv); for a vault using access policies: "
                f"az keyvault set-policy -n {_vault_name(url)} --object-id <principal id> "
                "--secret-permissions get."
            ) from None
        raise SecretError(f"Key Vault {url}: reading secret {name!r} failed: {_reason(exc)}") from None
    except (ServiceRequestError, OSError) as exc:
        raise SecretError(
            f"Key Vault {url} is unreachable while reading secret {name!r}: {describe_error(exc)}. Check "
            f"{VAULT_URL_ENV}, DNS/private endpoint and the vault's firewall."
        ) from None


def _client(url: str, config: conf.Config, timeout: float | None) -> SecretClient:
    check_url(url)
    key = (url, config, timeout)
    with _lock:
        client = _clients.get(key)
    if client is not None:
        return client
    from azure.keyvault.secrets import SecretClient

    from . import _build_provider

    provider = _build_provider(config, config.cloud.keyvault_scope, None)
    read_timeout = min(config.timeout, timeout) if timeout else config.timeout
    client = SecretClient(
        url,
        credential=provider,
        # a vault on 127.0.0.1 (the stand-in) cannot match the challenge's vault.azure.net
        verify_challenge_resource=not conf.is_loopback(urlsplit(url).hostname),
        connection_timeout=min(5.0, read_timeout),
        read_timeout=read_timeout,
        retry_total=0 if timeout else 3,
        retry_backoff_max=8,
    )
    with _lock:
        client = _clients.setdefault(key, client)
    return client


def check_url(url: str) -> None:
    """``AZURE_KEY_VAULT_URL`` must be an https URL (the system checks call this too)."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise SecretError(
            f"{VAULT_URL_ENV}={url!r} is not an https URL. Use the vault's URI, e.g. "
            "https://my-vault.vault.azure.net (az keyvault show -n NAME --query properties.vaultUri).",
            check_id="E040",
        )


def _identity_label(config: conf.Config) -> str:
    from .identity import identity_key

    return identity_key(config, None).label


def _vault_name(url: str) -> str:
    return (urlsplit(url).hostname or "VAULT").split(".")[0]


def _reason(exc: Any) -> str:
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    message = getattr(error, "message", None) or getattr(exc, "reason", None) or type(exc).__name__
    inner = getattr(error, "innererror", None) or {}
    if isinstance(inner, dict) and inner.get("code"):
        code = f"{code}/{inner['code']}"
    return f"{exc.status_code} {code}: {message}" if code else f"{exc.status_code} {message}"


def _after_fork() -> None:  # HTTP sessions must not be shared with the parent
    global _lock
    _lock = threading.Lock()
    _clients.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
