"""Key Vault as a service of django-azure-mi (:mod:`django_azure_mi.services`): its scopes, the check of
``AZURE_KEY_VAULT_URL``, the probe (the vault token, then the metadata of the secrets settings.py read)
and the diagnosis of Key Vault errors. Part of readiness, not of warm-up (settings.py read its secrets)."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Final

from ..services import Argument, CheckId, Selection, Service, Target
from .diagnosis import VAULT_URL_ENV

NAME: Final = "keyvault"
SCOPES: Final = {
    "public": "https://vault.azure.net/.default",
    "usgovernment": "https://vault.usgovcloudapi.net/.default",
    "china": "https://vault.azure.cn/.default",
}


def check(errors: list[Any]) -> None:
    from ..checks import run_check
    from . import check_url, vault_url

    url = vault_url()
    if url:
        run_check(errors, VAULT_URL_ENV, check_url, url)


def targets(selection: Selection) -> list[Target]:
    from . import vault_url

    url = vault_url() if selection.wants("keyvault") else None
    if not url:
        return []
    names = selection.arguments.get("secret")
    return [Target(NAME, url, VAULT_URL_ENV, functools.partial(probe, names=names) if names else probe)]


def probe(result: Any, deep: bool, names: list[str] | None = None) -> None:
    """The vault token, then the metadata of ``names`` (default: the secrets settings.py read)."""
    from .. import runtime
    from ..probes import identity_facts
    from . import secret_info, secrets_read

    config = runtime.get().config
    result.identity = identity_facts(SERVICE.scope(config.cloud.name), None)
    names = names or secrets_read()
    result.details["secrets"] = []
    for name in names if deep else names[:1]:
        info = secret_info(name, result.alias, timeout=10)
        result.details["secrets"].append(dataclasses.asdict(info))


def summary(details: dict[str, Any]) -> str:
    secrets = details.get("secrets") or []
    if not secrets:
        return "token ok (no secret read by settings to probe)"
    return ", ".join(f"secret {s['name']} ({'enabled' if s['enabled'] else 'disabled'})" for s in secrets)


CHECK_IDS: Final = (CheckId("E040", "`AZURE_KEY_VAULT_URL` is not an https URL"),)


def provision(plan: Any) -> None:
    """What Azure must have for it (``azure_setup``): .provision."""
    from .provision import provision as steps

    steps(plan, NAME)


SERVICE: Final = Service(
    name=NAME,
    check_ids=CHECK_IDS,
    title="Key Vault",
    extra="keyvault",
    scopes=SCOPES,
    check=check,
    targets=targets,
    summary=summary,
    arguments=(
        Argument("keyvault", f"only Key Vault ({VAULT_URL_ENV})"),
        Argument(
            "secret",
            "Key Vault secret whose metadata to read (default: the secrets settings.py read)",
            selects=False,
        ),
    ),
    purposes=frozenset({"check", "ready"}),
    unconfigured=f"no Key Vault is configured ({VAULT_URL_ENV} is not set).",
    provision=provision,
    setup_arguments=(
        Argument(
            "keyvault-url",
            f"the vault to set up, when {VAULT_URL_ENV} is not set for this command (a settings.py that "
            "reads its secrets at import can't, before the identity has access)",
            selects=False,
        ),
    ),
)
