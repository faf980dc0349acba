"""What a Blob Storage error means and what to do about it (the backend's errors and the probe's)."""

from __future__ import annotations

from typing import Final

from ..diagnostics import ServiceFailure, generic

ROLES: Final = (
    "Give the identity the 'Storage Blob Data Contributor' role on the storage account or container "
    "(and 'Storage Blob Delegator' for signed URLs): az role assignment create --assignee <principal id> "
    "--role 'Storage Blob Data Contributor' --scope <storage account id>. New assignments take a few minutes."
)


def diagnose(exc: BaseException, where: str) -> ServiceFailure:
    """A Blob Storage error (azure-core's HttpResponseError: status and error code)."""
    status = getattr(exc, "status_code", None)
    error_code = getattr(exc, "error_code", None)
    code = str(getattr(error_code, "value", error_code) or "")
    facts = {"status": status, "code": code}
    if status == 401 or code == "AuthenticationFailed":
        return ServiceFailure(
            "token-refused",
            "Blob Storage rejected the token (audience/scope, tenant or clock).",
            f"Check the scope ({where}['OPTIONS']['managed_identity']['scope'], default "
            "https://storage.azure.com/.default), AZURE_MANAGED_IDENTITY['CLOUD'] and the machine's clock.",
            facts,
        )
    if status == 403:  # AuthorizationPermissionMismatch, AuthorizationFailure
        return ServiceFailure(
            "no-role", "The identity has no data role on the storage account.", ROLES, facts
        )
    if code == "ContainerNotFound":
        return ServiceFailure(
            "no-container",
            "The container does not exist.",
            "Create it: az storage container create --auth-mode login ...",
            facts,
        )
    return generic("Blob Storage", where, exc)
