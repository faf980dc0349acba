"""What Key Vault must have for ``AZURE_KEY_VAULT_URL`` (:mod:`django_azure_mi.provision`): Azure RBAC as
its permission model, and *Key Vault Secrets User* on the vault for the settings' identity. A vault still
in the access-policy model ignores role assignments: that is the step people miss. Switching a vault to
RBAC drops its access policies, so the step says to check first.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from ..provision import Plan, Step


def provision(plan: Plan, name: str) -> None:
    """The steps of the vault (``AZURE_KEY_VAULT_URL`` or ``--keyvault-url``), as service ``name``."""
    from . import vault_url
    from .diagnosis import VAULT_URL_ENV

    url = plan.arguments.get("keyvault_url") or vault_url()
    if not url:
        return
    vault = (urlsplit(url).hostname or "").split(".", 1)[0]
    identity = plan.identity(None)  # settings.py's AZURE_MANAGED_IDENTITY reads the secrets
    principal = plan.principal(identity, name)
    group = plan.group()
    show = f"az keyvault show -g {group} -n {vault} --query properties.enableRbacAuthorization"
    switch = f"az keyvault update -g {group} -n {vault} --enable-rbac-authorization true"
    plan.add(
        Step(
            name, identity.label, "note",
            f"The vault {vault} must use Azure RBAC ({show} prints true). If it prints false, a role "
            f"assignment is ignored: switch it with {switch} once its access policies are no longer "
            "needed (the switch drops them).", "",
            (VAULT_URL_ENV,), explains=("no-role",), mentions=(show, switch),
        )
    )  # fmt: skip
    plan.add(
        Step(
            name, identity.label, "az",
            f"az role assignment create --assignee-object-id \"{principal}\" --assignee-principal-type "
            f'ServicePrincipal --role "Key Vault Secrets User" --scope '
            f'"$(az keyvault show -g {group} -n {vault} --query id -o tsv)"',
            f"the identity may read the secrets of {vault}", (VAULT_URL_ENV,), explains=("no-role",),
        )
    )  # fmt: skip
