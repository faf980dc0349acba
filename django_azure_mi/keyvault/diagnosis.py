"""What a Key Vault error means and what to do about it (secret() and the probe)."""

from __future__ import annotations

from typing import Final
from urllib.parse import urlsplit

from ..diagnostics import ServiceFailure, generic

VAULT_URL_ENV: Final = "AZURE_KEY_VAULT_URL"  # the setting (environment or .env); the package exports it


def diagnose_error(exc: BaseException, url: str, name: str | None = None) -> ServiceFailure:
    """A Key Vault error (azure-core exception types and status)."""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceNotFoundError,
        ServiceRequestError,
    )

    vault = (urlsplit(url).hostname or "VAULT").split(".")[0]
    secret = name or "<name>"
    if isinstance(exc, ResourceNotFoundError):
        return ServiceFailure(
            "not-found",
            "The secret does not exist in this vault.",
            f"Create it: az keyvault secret set --vault-name {vault} --name {secret} --file <file>",
        )
    if isinstance(exc, ClientAuthenticationError):
        return ServiceFailure(
            "token-refused",
            "Key Vault refused the token.",
            "Check that the vault is in the identity's tenant and that AZURE_MANAGED_IDENTITY['CLOUD'] "
            "matches the vault's cloud.",
        )
    if isinstance(exc, HttpResponseError) and exc.status_code == 403:
        return ServiceFailure(
            "no-role",
            "The identity may not read secrets in this vault.",
            "Grant it the 'Key Vault Secrets User' role: az role assignment create --role 'Key Vault Secrets "
            f"User' --assignee <principal id> --scope $(az keyvault show -n {vault} --query id -o tsv); for "
            f"a vault using access policies: az keyvault set-policy -n {vault} --object-id <principal id> "
            "--secret-permissions get.",
        )
    if isinstance(exc, (ServiceRequestError, OSError)):
        return ServiceFailure(
            "unreachable",
            "Key Vault is unreachable.",
            f"Check {VAULT_URL_ENV}, DNS/private endpoint and the vault's firewall.",
        )
    return generic("Key Vault", VAULT_URL_ENV, exc)
