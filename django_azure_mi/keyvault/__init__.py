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
import types
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

from .. import conf, diagnostics, runtime, services
from ..core.errors import Problem, install_log_redaction
from ..options import BindingCredential, ServiceBinding, is_loopback
from .diagnosis import VAULT_URL_ENV as VAULT_URL_ENV
from .diagnosis import diagnose_error

if TYPE_CHECKING:
    from azure.keyvault.secrets import KeyVaultSecret, SecretClient

logger = logging.getLogger("django_azure_mi.keyvault")

NAME: Final = "keyvault"  # its service (services.py)
_NAME = re.compile(r"^[0-9A-Za-z-]{1,127}$")


class _Missing:
    def __repr__(self) -> str:
        return "<required>"


MISSING: Final = _Missing()


class SecretError(ImproperlyConfigured):
    """A secret could not be read; the message names the secret, the source and the fix. ``problem`` is set
    when the cause is static misconfiguration (``manage.py check`` reports it under its id)."""

    def __init__(self, message: str, problem: Problem | None = None) -> None:
        super().__init__(message)
        self.problem = problem

    @property
    def check_id(self) -> str | None:
        return self.problem.check_id if self.problem else None


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
    state = _state()
    dotenv = state.dotenv(env_file)
    url = vault_url or _configured_vault(env_file)
    key = (url or "", name, version, env_name, os.fspath(env_file) if env_file else None)
    with state.lock:
        if key in state.values:
            return state.values[key]
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
    with state.lock:
        state.values[key] = value
    return value


def secret_info(name: str, vault_url: str | None = None, timeout: float | None = None) -> SecretInfo:
    """Read secret ``name`` from the vault and describe it without its value (``azure_check``)."""
    url = vault_url or _configured_vault(None)
    if not url:
        raise SecretError(f"No Key Vault configured: set {VAULT_URL_ENV} to the vault's URL.")
    from azure.core.exceptions import ResourceNotFoundError

    try:
        found: KeyVaultSecret | None = _get(url, name, None, runtime.get().config, timeout)
    except ResourceNotFoundError:  # raised outside the except: no context chained on
        found = None
    if found is None:
        raise _not_found(url, name, None)
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
    state = _state()
    with state.lock:
        return list(state.read_names)


def vault_url() -> str | None:
    """The configured vault (``AZURE_KEY_VAULT_URL`` from the environment or ``.env``), or None."""
    return _configured_vault(None)


def _configured_vault(env_file: str | os.PathLike[str] | None) -> str | None:
    return os.environ.get(VAULT_URL_ENV) or _state().dotenv(env_file).get(VAULT_URL_ENV) or None


# ---------------------------------------------------------------------------------------------- internals


class _DotEnv(dict[str, str | None]):
    path: str | None = None


class KeyVaultState:
    """What ``secret()`` remembers in this process: values, the names read from the vault, SDK clients and
    parsed ``.env`` files. A runtime component."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: dict[tuple[Any, ...], str] = {}
        self.read_names: list[str] = []
        self.clients: dict[tuple[str, conf.Config, float | None], SecretClient] = {}
        self.dotenv_files: dict[str, _DotEnv] = {}

    def dotenv(self, env_file: str | os.PathLike[str] | None) -> _DotEnv:
        path = os.path.abspath(os.fspath(env_file) if env_file else ".env")
        if env_file and os.path.isdir(path):
            raise SecretError(
                f"env_file={os.fspath(env_file)!r} is a directory, not a .env file: pass the file's path, "
                "e.g. env_file=BASE_DIR / '.env'."
            )
        with self.lock:
            cached = self.dotenv_files.get(path)
        if cached is not None:
            return cached
        values = _DotEnv()
        if os.path.isfile(path):
            from dotenv import dotenv_values

            values.update(dotenv_values(path))
            values.path = path  # a missing file is fine: on Azure there is none
        with self.lock:
            self.dotenv_files[path] = values
        return values

    def close(self) -> None:
        with self.lock:
            self.values.clear()
            self.read_names.clear()
            self.clients.clear()
            self.dotenv_files.clear()

    def after_fork(self) -> None:  # HTTP sessions must not be shared with the parent
        self.lock = threading.Lock()
        self.clients.clear()


def _state() -> KeyVaultState:
    return runtime.get().component("keyvault", KeyVaultState)


def _identity_setting() -> conf.Config:
    """The ``AZURE_MANAGED_IDENTITY`` to use: Django's settings once configured; while settings.py is
    still running, the value it has assigned so far (define it above the first ``secret()``)."""
    from django.conf import settings

    if settings.configured:
        return runtime.get().config
    frame = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame = frame.f_back  # type: ignore[assignment]
    so_far = types.SimpleNamespace(**(frame.f_globals if frame is not None else {}))
    return conf.build_config(conf.read_setting(so_far))  # an explicit None is refused here too


def _from_vault(
    url: str, name: str, version: str | None, default: str | _Missing, config: conf.Config
) -> str:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        found: KeyVaultSecret | None = _get(url, name, version, config, None)
    except ResourceNotFoundError:  # raised outside the except: no context chained on
        found = None
    if found is None:
        if isinstance(default, str):
            logger.info("Key Vault secret %r not in %s: using the default", name, url)
            return default
        raise _not_found(url, name, version)
    if found.value is None:
        raise SecretError(f"Key Vault secret {name!r} in {url} has no value.")
    logger.info("Read Key Vault secret %r (version %s) from %s", name, found.properties.version, url)
    state = _state()
    with state.lock:
        if name not in state.read_names:
            state.read_names.append(name)
    return found.value


def _not_found(url: str, name: str, version: str | None) -> SecretError:
    from azure.core.exceptions import ResourceNotFoundError

    failure = diagnose_error(ResourceNotFoundError(), url, name)
    where = f" (version {version})" if version else ""
    message = (
        f"Key Vault secret {name!r} does not exist in {url}{where}. {failure.fix}, or pass default=... to "
        f"secret({name!r})."
    )
    return diagnostics.attach(SecretError(message), failure)  # type: ignore[return-value]


def _get(
    url: str, name: str, version: str | None, config: conf.Config, timeout: float | None
) -> KeyVaultSecret:
    """One ``get_secret`` with our errors. ``timeout`` bounds the whole call (``azure_check``). Whatever
    escapes is :func:`~django_azure_mi.core.errors.scrubbed` (the SDK's frames held the bearer token)."""
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

    from ..core.errors import ScopeRefusedError, TokenUnavailableError, describe_error, scrubbed

    client = _client(url, config, timeout)
    identity = _identity_label(config)
    try:
        return client.get_secret(name, version)
    except BaseException as exc:
        error = exc
    if isinstance(error, ResourceNotFoundError) or not isinstance(error, Exception):
        raise scrubbed(error)
    failure = diagnostics.diagnose_identity(error) or diagnose_error(error, url, name)
    if isinstance(error, TokenUnavailableError):
        message = f"Key Vault secret {name!r}: no token for {identity}: {error}"
    elif isinstance(error, ScopeRefusedError):
        message = f"Key Vault {url}, secret {name!r}: {error}"
    elif failure.kind == "token-refused":
        message = (
            f"Key Vault {url} refused the token of {identity} for secret {name!r} ({_reason(error)}). "
            f"{failure.fix}"
        )
    elif failure.kind == "no-role":
        message = f"{identity} may not read secret {name!r} in {url} ({_reason(error)}). {failure.fix}"
    elif failure.kind == "unreachable":
        message = (
            f"Key Vault {url} is unreachable while reading secret {name!r}: {describe_error(error)}. "
            f"{failure.fix}"
        )
    elif isinstance(error, HttpResponseError):
        message = f"Key Vault {url}: reading secret {name!r} failed: {_reason(error)}"
    else:
        raise scrubbed(error)
    scrubbed(error)  # this frame's locals hold it
    raise diagnostics.attach(SecretError(message), failure) from None


def _client(url: str, config: conf.Config, timeout: float | None) -> SecretClient:
    check_url(url)
    key = (url, config, timeout)
    state = _state()
    with state.lock:
        client = state.clients.get(key)
    if client is not None:
        return client
    from azure.keyvault.secrets import SecretClient

    # the vault's credential serves the vault's scope only, whatever resource a challenge names
    scope = services.get(NAME).scope(config.cloud.name)
    credential = BindingCredential(
        ServiceBinding(NAME, VAULT_URL_ENV, None, scope),
        lambda: runtime.get().provider(scope, None, config),
    )
    read_timeout = min(config.timeout, timeout) if timeout else config.timeout
    client = SecretClient(
        url,
        credential=credential,
        # a vault on 127.0.0.1 (the stand-in) cannot match the challenge's vault.azure.net
        verify_challenge_resource=not is_loopback(urlsplit(url).hostname),
        connection_timeout=min(5.0, read_timeout),
        read_timeout=read_timeout,
        retry_total=0 if timeout else 3,
        retry_backoff_max=8,
    )
    install_log_redaction()  # the Key Vault SDK's loggers exist now
    with state.lock:
        client = state.clients.setdefault(key, client)
    return client


def check_url(url: str) -> None:
    """``AZURE_KEY_VAULT_URL`` must be an https URL (the system checks call this too)."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        problem = Problem(
            "E040",
            f"{VAULT_URL_ENV}={url!r} is not an https URL.",
            "Use the vault's URI, e.g. https://my-vault.vault.azure.net (az keyvault show -n NAME --query "
            "properties.vaultUri).",
        )
        raise SecretError(problem.message, problem)


def _identity_label(config: conf.Config) -> str:
    return runtime.get().identity_key(None, config).label


def _reason(exc: Any) -> str:
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    message = getattr(error, "message", None) or getattr(exc, "reason", None) or type(exc).__name__
    inner = getattr(error, "innererror", None) or {}
    if isinstance(inner, dict) and inner.get("code"):
        code = f"{code}/{inner['code']}"
    return f"{exc.status_code} {code}: {message}" if code else f"{exc.status_code} {message}"
