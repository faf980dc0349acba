"""What Blob Storage must have for each ``STORAGES`` alias on our backend (:mod:`django_azure_mi.provision`):
the container, a data role for the identity on it, and, for signed URLs (``expiration_secs``), *Storage Blob
Delegator* on the account: a user delegation key is asked of the account, so a data role on the container
alone does not let the identity sign (the most common cause of signed URLs failing with 403).
"""

from __future__ import annotations

from typing import Any, Final

from ..provision import Plan, Step

DATA_KINDS: Final = ("no-role", "token-refused")
READER: Final = "Storage Blob Data Reader"
CONTRIBUTOR: Final = "Storage Blob Data Contributor"


def provision(plan: Plan, name: str, backend: str) -> None:
    """The steps of every storage on ``backend``, as service ``name``."""
    from django.conf import settings

    from . import AzureManagedIdentityStorage

    for alias, entry in (getattr(settings, "STORAGES", None) or {}).items():
        if entry.get("BACKEND") != backend:
            continue
        storage: Any = AzureManagedIdentityStorage(**(entry.get("OPTIONS") or {}))  # validates; no request
        where = f"STORAGES[{alias!r}]"
        identity = plan.identity(storage.client_id)
        principal = plan.principal(identity, name)
        account, container, group = storage.account_name, storage.azure_container, plan.group()
        account_id = f"$(az storage account show -g {group} -n {account} --query id -o tsv)"
        plan.add(
            Step(
                name, identity.label, "az",
                f"az storage container create --account-name {account} -n {container} --auth-mode login",
                f"the container {container!r} exists ({where}['OPTIONS']['azure_container'])", (where,),
                explains=("no-container",),
            )
        )  # fmt: skip
        plan.add(
            Step(
                name, identity.label, "az",
                f"az role assignment create --assignee-object-id \"{principal}\" --assignee-principal-type "
                f'ServicePrincipal --role "{CONTRIBUTOR}" --scope "{account_id}/blobServices/default/'
                f'containers/{container}"',
                f"the identity may read and write the blobs of {account}/{container}", (where,),
                explains=DATA_KINDS,
            )
        )  # fmt: skip
        if storage.expiration_secs:
            plan.add(
                Step(
                    name, identity.label, "az",
                    f'az role assignment create --assignee-object-id "{principal}" --assignee-principal-type '
                    f'ServicePrincipal --role "Storage Blob Delegator" --scope "{account_id}"',
                    f"the identity may get the user delegation key that signs URLs, which is asked of the "
                    f"account {account} (expiration_secs is set)", (where,), explains=DATA_KINDS,
                )
            )  # fmt: skip
