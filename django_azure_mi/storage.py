"""Blob Storage with a managed identity: django-storages' ``AzureStorage`` on the token core, with cached
user-delegation SAS for signed URLs.

    STORAGES = {"default": {
        "BACKEND": "django_azure_mi.storage.AzureManagedIdentityStorage",
        "OPTIONS": {"account_name": "acct", "azure_container": "media", "expiration_secs": 3600,
                    "account_url": None},   # custom endpoint, e.g. "https://127.0.0.1:10000/devstoreaccount1"
    }}

Every django-storages option keeps working. What differs from the stock backend with a ``token_credential``:

* the credential is the process-wide :class:`~django_azure_mi.tokens.TokenProvider` for the storage scope
  (one per identity, shared by every storage instance);
* ``account_url`` for path-style emulator URLs, private endpoints and sovereign clouds;
* the user delegation key is cached process-wide per (account, identity), fetched single-flight, its start
  backdated for clock skew, its expiry under 7 days, renewed ahead of time in the background; a warm
  ``url()`` makes no network call and builds no SDK client; no SAS outlives its key;
* bearer tokens only over HTTPS except to loopback, and errors that name the setting or the RBAC role.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobSasPermissions, UserDelegationKey, generate_blob_sas
from django.utils.deconstruct import deconstructible
from storages.backends.azure_storage import AzureStorage

from . import conf, get_token_provider
from .conf import SettingError
from .tokens import TokenProvider, describe_error

logger = logging.getLogger("django_azure_mi.storage")
T = TypeVar("T")

KEY_LIFETIME = timedelta(days=6)  # Azure allows 7 days at most; some servers reject exactly 7
KEY_BACKDATE = timedelta(minutes=15)  # start in the past: clocks differ
KEY_RENEW_FRACTION = 0.25  # renew in the background once a quarter of the key's life remains
WHERE = "STORAGES[…]['OPTIONS']"
ROLES = (
    "Give the identity the 'Storage Blob Data Contributor' role on the storage account or container "
    "(and 'Storage Blob Delegator' for signed URLs): az role assignment create --assignee <principal id> "
    "--role 'Storage Blob Data Contributor' --scope <storage account id>. New assignments take a few minutes."
)


@dataclass(frozen=True)
class _Key:
    key: UserDelegationKey
    start: datetime
    expiry: datetime
    renew_at: datetime


class DelegationKeys:
    """The user delegation key of one (account, identity): single-flight, renewed in the background."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.requests = 0  # how many keys were requested (tests, benchmarks)
        self._key: _Key | None = None
        self._lock = threading.Lock()
        self._renewing = False

    def get(self, service_client: Any, needed_until: datetime) -> _Key:
        key = self._key
        if key is not None and needed_until <= key.expiry:
            if datetime.now(timezone.utc) >= key.renew_at and not self._renewing:
                self._renew_in_background(service_client)
            return key
        with self._lock:  # single-flight
            key = self._key
            if key is None or needed_until > key.expiry:
                key = self._fetch(service_client)
            return key

    def _fetch(self, service_client: Any) -> _Key:
        now = datetime.now(timezone.utc)
        start, expiry = now - KEY_BACKDATE, now + KEY_LIFETIME
        self.requests += 1
        try:
            value = service_client.get_user_delegation_key(key_start_time=start, key_expiry_time=expiry)
        except HttpResponseError as exc:
            raise _explained(exc, "get a user delegation key (signed URLs)") from None
        key = _Key(value, start, expiry, expiry - (expiry - now) * KEY_RENEW_FRACTION)
        self._key = key
        logger.info("user delegation key acquired: %s expires=%s", self.label, expiry.isoformat())
        return key

    def _renew_in_background(self, service_client: Any) -> None:
        self._renewing = True

        def renew() -> None:
            try:
                with self._lock:
                    self._fetch(service_client)
            except Exception as exc:  # the current key is still valid: the next url() tries again
                logger.warning("user delegation key renewal failed: %s %s", self.label, describe_error(exc))
            finally:
                self._renewing = False

        threading.Thread(target=renew, name="django-azure-mi delegation key", daemon=True).start()


_keys: dict[tuple[str, str], DelegationKeys] = {}
_keys_lock = threading.Lock()


def delegation_keys(account_url: str, identity: str) -> DelegationKeys:
    with _keys_lock:
        keys = _keys.get((account_url, identity))
        if keys is None:
            keys = _keys[(account_url, identity)] = DelegationKeys(
                f"account={account_url} identity={identity}"
            )
        return keys


def reset() -> None:
    with _keys_lock:
        _keys.clear()


def _after_fork_in_child() -> None:
    """Locks held at fork stay held in the child, and a renewal thread does not survive it."""
    global _keys_lock
    _keys_lock = threading.Lock()
    for keys in _keys.values():
        keys._lock = threading.Lock()
        keys._renewing = False


os.register_at_fork(after_in_child=_after_fork_in_child)


def _explained(exc: HttpResponseError, action: str) -> HttpResponseError:
    """The same error with what to do about it (RBAC, audience), never a token."""
    status = exc.status_code
    error_code = getattr(exc, "error_code", None)
    code = str(getattr(error_code, "value", error_code) or "")
    if status == 401 or code == "AuthenticationFailed":
        hint = (
            "The token was not accepted: check the scope (STORAGES OPTIONS managed_identity.scope, default "
            "https://storage.azure.com/.default) and AZURE_MANAGED_IDENTITY['CLOUD'], and the "
            "machine's clock."
        )
    elif status == 403:  # AuthorizationPermissionMismatch, AuthorizationFailure: the identity lacks a role
        hint = ROLES
    else:
        return exc
    message = f"Blob Storage refused to {action} ({status} {code}): {describe_error(exc, 300)} {hint}"
    return HttpResponseError(message=message, response=exc.response)


def _explain_errors(action: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Re-raise 401/403 from a storage operation with what to do about it."""

    def decorate(method: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(method)
        def wrapper(self: Any, name: str = "", *args: Any, **kwargs: Any) -> T:
            try:
                return method(self, name, *args, **kwargs)
            except HttpResponseError as exc:
                raise _explained(exc, f"{action} {name!r}") from None

        return wrapper

    return decorate


@deconstructible
class AzureManagedIdentityStorage(AzureStorage):  # type: ignore[misc]
    """django-storages' AzureStorage signing in with the managed identity (see the module docstring)."""

    account_url: str
    account_name: str | None
    scope: str
    client_id: str | None

    def get_default_settings(self) -> dict[str, Any]:
        defaults: dict[str, Any] = super().get_default_settings()
        defaults.update(account_url=None, managed_identity=None)
        return defaults

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        for name in ("connection_string", "account_key", "sas_token", "token_credential"):
            if getattr(self, name):
                raise SettingError(
                    "E030",
                    f"{WHERE}['{name}'] (or its AZURE_* setting) is set, but "
                    "AzureManagedIdentityStorage signs "
                    f"every request with the managed identity. Remove {name}, or use "
                    "storages.backends.azure_storage.AzureStorage for key/SAS/connection-string access.",
                )
        raw = self.managed_identity or {}
        if not isinstance(raw, dict) or set(raw) - {"client_id", "scope"}:
            raise SettingError(
                "E031", f"{WHERE}['managed_identity'] must be a dict with 'client_id' and/or 'scope'."
            )
        self.client_id, self.scope = conf.adapter_identity(raw, "storage", f"{WHERE}['managed_identity']")
        self._resolve_account()
        if self.expiration_secs and self.expiration_secs > (KEY_LIFETIME - KEY_BACKDATE).total_seconds():
            raise SettingError(
                "E034",
                f"{WHERE}['expiration_secs'] = {self.expiration_secs}: a signed URL cannot outlive its user "
                f"delegation key ({KEY_LIFETIME.days} days here, 7 at most on Azure). Use a smaller value.",
            )
        self.token_credential: TokenProvider = get_token_provider(self.scope, client_id=self.client_id)
        self._keys = delegation_keys(self.account_url, self.token_credential.identity)
        self._container_url: str | None = None

    def _resolve_account(self) -> None:
        if self.account_url:
            parts = urlsplit(self.account_url.rstrip("/"))
            if parts.scheme != "https" and not (parts.scheme == "http" and conf.is_loopback(parts.hostname)):
                raise SettingError(
                    "E032",
                    f"{WHERE}['account_url'] = {self.account_url!r}: bearer tokens go only over https "
                    "(plain http is allowed to loopback hosts only).",
                )
            path_account = parts.path.strip("/").split("/")[0] if parts.path.strip("/") else ""
            host_account = (parts.hostname or "").split(".")[0] if ".blob." in (parts.hostname or "") else ""
            self.account_name = self.account_name or path_account or host_account
            self.account_url = self.account_url.rstrip("/")
            if not self.account_name:
                raise SettingError(
                    "E033",
                    f"{WHERE}['account_name'] is needed with account_url {self.account_url!r} (it names the "
                    "account in signed URLs).",
                )
            return
        if not self.account_name:
            raise SettingError(
                "E033",
                f"{WHERE} needs 'account_name' (the storage account) or 'account_url' (a custom "
                "endpoint such as "
                "'https://127.0.0.1:10000/devstoreaccount1').",
            )
        if not self.azure_ssl:
            raise SettingError("E032", f"{WHERE}['azure_ssl'] is False: bearer tokens go only over https.")
        suffix = self.endpoint_suffix
        cloud = conf.get_config().cloud
        if suffix == "core.windows.net" and cloud.name != "public":
            suffix = cloud.storage_suffix
        self.account_url = f"https://{self.account_name}.blob.{suffix}"

    def _get_service_client(self) -> Any:
        from azure.storage.blob import BlobServiceClient

        options = dict(self.client_options)
        # The SDK asks the credential for {audience}/.default: make that our configured scope.
        options.setdefault("audience", self.scope.removesuffix("/.default"))
        return BlobServiceClient(self.account_url, credential=self.token_credential, **options)

    @_explain_errors("upload")
    def _save(self, name: str, content: Any) -> str:
        return str(super()._save(name, content))

    @_explain_errors("open")
    def _open(self, name: str, mode: str = "rb") -> Any:
        return super()._open(name, mode)

    @_explain_errors("check")
    def exists(self, name: str) -> bool:
        return bool(super().exists(name))

    @_explain_errors("delete")
    def delete(self, name: str) -> None:
        super().delete(name)

    @_explain_errors("read the size of")
    def size(self, name: str) -> int:
        return int(super().size(name))

    @_explain_errors("list")
    def listdir(self, path: str = "") -> tuple[list[str], list[str]]:
        return super().listdir(path)  # type: ignore[no-any-return]

    @_explain_errors("read the modification time of")
    def get_modified_time(self, name: str) -> datetime:
        return super().get_modified_time(name)  # type: ignore[no-any-return]

    def get_user_delegation_key(self, expiry: datetime) -> UserDelegationKey:
        if expiry.tzinfo is None:
            expiry = expiry.replace(tzinfo=timezone.utc)
        return self._keys.get(self.service_client, expiry).key

    def url(
        self, name: str, expire: int | None = None, parameters: dict[str, Any] | None = None, mode: str = "r"
    ) -> str:
        name = self._get_valid_path(name)
        if self._container_url is None:
            container_url = self.client.url
            if self.custom_domain:
                container_url = urlunsplit(urlsplit(container_url)._replace(netloc=self.custom_domain))
            self._container_url = container_url.rstrip("/")
        blob_url = f"{self._container_url}/{quote(name, safe='~/')}"
        if expire is None:
            expire = self.expiration_secs
        if not expire:
            return blob_url
        expiry = datetime.now(timezone.utc) + timedelta(seconds=expire)
        key = self._keys.get(self.service_client, expiry)
        sas = generate_blob_sas(
            str(self.account_name),  # set by _resolve_account
            self.azure_container,
            name,
            user_delegation_key=key.key,
            permission=BlobSasPermissions.from_string(mode),
            expiry=expiry,  # never past key.expiry: the key was fetched to cover it
            **(parameters or {}),
        )
        return f"{blob_url}?{sas}"
