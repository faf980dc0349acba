"""Blob Storage with a managed identity: django-storages' ``AzureStorage`` on the token core, with cached
user-delegation SAS for signed URLs.

    STORAGES = {"default": {
        "BACKEND": "django_azure_mi.storage.AzureManagedIdentityStorage",
        "OPTIONS": {"account_name": "acct", "azure_container": "media", "expiration_secs": 3600,
                    "account_url": None},   # custom endpoint, e.g. "https://127.0.0.1:10000/devstoreaccount1"
    }}

Every django-storages option keeps working. What differs from the stock backend with a ``token_credential``:

* the credential is the runtime's :class:`~django_azure_mi.core.provider.TokenProvider` for the storage
  scope (one per identity, shared by every storage instance);
* ``account_url`` for path-style emulator URLs, private endpoints and sovereign clouds;
* the user delegation key is cached process-wide per (account, identity) (:mod:`.delegation`); a warm
  ``url()`` makes no network call and builds no SDK client; no SAS outlives its key;
* bearer tokens only over HTTPS except to loopback, and errors that name the setting or the RBAC role;
* the Storage contract as FileSystemStorage keeps it, where django-storages does not (:mod:`.files`:
  ``listdir()``, ``exists()`` of folders, ``FileNotFoundError``, ``get_created_time()``); uploads and
  downloads move in 4 MiB pieces (bounded memory).

Constructing the backend validates its options and does nothing else (no credential, no request), so the
system checks construct it too.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any, Final
from urllib.parse import quote, urlsplit, urlunsplit

from azure.storage.blob import BlobSasPermissions, UserDelegationKey, generate_blob_sas
from django.utils.deconstruct import deconstructible

from .. import runtime
from ..core.errors import install_log_redaction
from ..diagnostics import SettingError
from ..options import (
    BindingCredential,
    OptionSpec,
    ServiceBinding,
    alias_of,
    bind,
    boolean,
    require_tls,
    verifies,
)
from .delegation import KEY_BACKDATE, KEY_LIFETIME, DelegationKeys
from .files import BlobFiles, explain_errors

SPEC: Final = OptionSpec(
    "storage",  # its service (services.py)
    "managed_identity",
    "E031",
    "{'client_id': '<client id>', 'scope': 'https://storage.azure.com/.default'}",
    extra={"verify_tls": (boolean, True)},
)


def check_names(where: str, container: Any, domain: Any) -> None:
    """The container and custom domain options (E036, E035)."""
    if not isinstance(container, str) or not container:
        raise SettingError(
            "E036",
            f"{where}['azure_container'] (or AZURE_CONTAINER) is not set.",
            "Name the blob container the files go to, e.g. 'media' (3-63 lower-case letters, digits and "
            "dashes).",
        )
    if domain and (not isinstance(domain, str) or not re.fullmatch(r"[A-Za-z0-9.-]+(:\d+)?", domain)):
        plain = isinstance(domain, str) and domain.lower().startswith("http://")
        raise SettingError(
            "E035",
            f"{where}['custom_domain'] = {domain!r} is not a host name"
            + (": signed URLs (their SAS is a credential) would travel over plain http." if plain else "."),
            "Give the host only, e.g. 'cdn.example.com' (URLs keep https); put a path prefix in 'location'.",
        )


RETRIES: Final = 2  # SDK retries per call (3 tries); the SDK's default policy waits 15 s, 18 s, 24 s...


PIECE: Final = 4 * 1024 * 1024  # largest single upload/download request (the SDK's: 64 and 32 MiB)


def bounded(options: dict[str, Any], timeout: float) -> dict[str, Any]:
    """The SDK client's options with every call bounded by ``AZURE_MANAGED_IDENTITY['TIMEOUT']`` (``T``):
    connect within T/4 (5 s at most), read within T, 3 tries 1-4 s apart. The SDK's defaults (connect 20 s,
    read 60 s, backoff from 15 s) kept one call to an unreachable endpoint busy for about 85 s. Files move
    in pieces of 4 MiB: the SDK's defaults read a whole file of up to 64 MiB into memory to upload it in
    one request. Options the user set in ``client_options`` win."""
    from azure.storage.blob import ExponentialRetry

    options.setdefault("connection_timeout", min(5.0, timeout / 4))
    options.setdefault("read_timeout", timeout)
    options.setdefault("max_single_put_size", PIECE)
    options.setdefault("max_single_get_size", PIECE)
    if "retry_policy" not in options and not any(key.startswith("retry_") for key in options):
        options["retry_policy"] = ExponentialRetry(
            initial_backoff=1, increment_base=2, retry_total=RETRIES, random_jitter_range=1
        )
    return options


SUFFIXES: Final = {  # each cloud's blob endpoint: https://{account}.blob.{suffix}
    "public": "core.windows.net",
    "usgovernment": "core.usgovcloudapi.net",
    "china": "core.chinacloudapi.cn",
}


@deconstructible
class AzureManagedIdentityStorage(BlobFiles):
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
        self.alias = alias_of("STORAGES", settings)  # names the alias in messages: STORAGES['media']
        self.where = f"{self.alias}['OPTIONS']"
        super().__init__(**settings)
        for name in ("connection_string", "account_key", "sas_token", "token_credential"):
            if getattr(self, name):
                raise SettingError(
                    "E030",
                    f"{self.where}['{name}'] (or its AZURE_* setting) is set, but "
                    "AzureManagedIdentityStorage signs every request with the managed identity.",
                    f"Remove {name}, or use storages.backends.azure_storage.AzureStorage for "
                    "key/SAS/connection-string access.",
                )
        self.binding: ServiceBinding = bind(SPEC, self.managed_identity, self.where)
        self.client_id, self.scope = self.binding.client_id, self.binding.scope
        self._resolve_account()
        verify = (self.client_options or {}).get("connection_verify", True)
        require_tls(
            "E032",
            [urlsplit(self.account_url).hostname],
            verifies("connection_verify", verify) or not self.binding.values["verify_tls"],
            f"{self.where}['client_options']['connection_verify'] = {verify!r} does not verify the server: "
            f"the access token could go to an impostor of {self.account_url}.",
            "Remove it, or use True or a CA file's path (Azure's certificates verify against the default "
            "trust store; for a local emulator "
            "pass the path of its CA file), or set "
            f"{self.where}['managed_identity']['verify_tls'] = False to accept the risk (manage.py check "
            "warns).",
        )
        if self.expiration_secs is not None and (
            isinstance(self.expiration_secs, bool)
            or not isinstance(self.expiration_secs, (int, float))
            or self.expiration_secs < 0
        ):
            raise SettingError(
                "E034",
                f"{self.where}['expiration_secs'] = {self.expiration_secs!r} is not a number of seconds "
                ">= 0.",
                "Use None or 0 for plain URLs, or the lifetime of signed URLs (e.g. 3600).",
            )
        if self.expiration_secs and self.expiration_secs > (KEY_LIFETIME - KEY_BACKDATE).total_seconds():
            raise SettingError(
                "E034",
                f"{self.where}['expiration_secs'] = {self.expiration_secs}: a signed URL cannot outlive its "
                f"user delegation key ({KEY_LIFETIME.days} days here, 7 at most on Azure).",
                "Use a smaller value.",
            )
        check_names(self.where, self.azure_container, self.custom_domain)
        self.token_credential: BindingCredential = self.binding.credential
        self._container_url: str | None = None

    @runtime.per_runtime
    def _keys(self, rt: runtime.Runtime) -> DelegationKeys:
        """The delegation keys of this account and identity (shared by every instance; runtime-owned)."""
        label = f"account={self.account_url} identity={self.token_credential.identity}"
        return rt.component(
            ("delegation-keys", self.account_url, self.binding),
            lambda: DelegationKeys(label, rt.config.timeout, self._request_key, self.alias, rt.clock),
        )

    def _resolve_account(self) -> None:
        if self.account_url:
            parts = urlsplit(self.account_url.rstrip("/"))
            require_tls(
                "E032",
                [parts.hostname],
                parts.scheme == "https",
                f"{self.where}['account_url'] = {self.account_url!r}: bearer tokens go only over https.",
                f"Use https://{parts.netloc}{parts.path} (plain http is allowed to loopback hosts only).",
            )
            path_account = parts.path.strip("/").split("/")[0] if parts.path.strip("/") else ""
            host_account = (parts.hostname or "").split(".")[0] if ".blob." in (parts.hostname or "") else ""
            self.account_name = self.account_name or path_account or host_account
            self.account_url = self.account_url.rstrip("/")
            if not self.account_name:
                raise SettingError(
                    "E033",
                    f"{self.where}['account_name'] is needed with account_url {self.account_url!r}",
                    "(it names the account in signed URLs).",
                )
            return
        if not self.account_name:
            raise SettingError(
                "E033",
                f"{self.where} has no 'account_name' (the storage account) nor 'account_url'.",
                "Set 'account_name', or 'account_url' for a custom endpoint (such as "
                "'https://127.0.0.1:10000/devstoreaccount1').",
            )
        if not re.fullmatch(r"[a-z0-9]{3,24}", str(self.account_name)):
            raise SettingError(
                "E033",
                f"{self.where}['account_name'] = {self.account_name!r} is not a storage account name (3-24 "
                "lower-case letters and digits).",
                "Give the account's name, or a full endpoint as 'account_url' (e.g. a private endpoint or an "
                "emulator URL).",
            )
        suffix = self.endpoint_suffix
        cloud = runtime.get().config.cloud
        if suffix == "core.windows.net" and cloud.name != "public":
            suffix = SUFFIXES[cloud.name]
        host = f"{self.account_name}.blob.{suffix}"
        require_tls(
            "E032",
            host,
            bool(self.azure_ssl),
            f"{self.where}['azure_ssl'] is False: bearer tokens go only over https.",
            "Remove azure_ssl (https is the default); for a local emulator over http give its loopback "
            "URL as 'account_url'.",
        )
        self.account_url = f"https://{host}"

    def _get_service_client(self) -> Any:
        from azure.storage.blob import BlobServiceClient

        install_log_redaction()  # the storage SDK's loggers exist now
        options = bounded(dict(self.client_options), runtime.get().config.timeout)
        # The SDK asks the credential for {audience}/.default: make that our configured scope.
        options.setdefault("audience", self.scope.removesuffix("/.default"))
        return BlobServiceClient(self.account_url, credential=self.token_credential, **options)

    def _request_key(self, start: datetime, expiry: datetime) -> UserDelegationKey:
        """One request for a user delegation key (the keys' fetch: the first instance of the account's)."""
        key: UserDelegationKey = self.service_client.get_user_delegation_key(
            key_start_time=start, key_expiry_time=expiry
        )
        return key

    def get_user_delegation_key(self, expiry: datetime) -> UserDelegationKey:
        if expiry.tzinfo is None:
            expiry = expiry.replace(tzinfo=timezone.utc)
        return self._keys.get(expiry).key

    @explain_errors("sign a URL for")
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
        keys = self._keys
        expiry = datetime.fromtimestamp(keys.clock.time(), timezone.utc) + timedelta(seconds=expire)
        key = keys.get(expiry)
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
