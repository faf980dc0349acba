"""Blob Storage as a service of django-azure-mi (:mod:`django_azure_mi.services`): its scopes and endpoint
suffixes per cloud, checks, probe (with the signed URL), diagnosis and warm-up. Imports no storage SDK at
module level: the checks report a missing one (E006)."""

from __future__ import annotations

import re
import uuid
from typing import Any, Final

from django.core import checks

from ..diagnostics import ServiceFailure, attach
from ..services import Argument, CheckId, Selection, Service, Target, aliases
from .diagnosis import diagnose

NAME: Final = "storage"
BACKEND: Final = "django_azure_mi.storage.AzureManagedIdentityStorage"
SCOPES: Final = dict.fromkeys(("public", "usgovernment", "china"), "https://storage.azure.com/.default")


def check(errors: list[checks.CheckMessage]) -> None:
    from django.conf import settings

    from ..checks import run_check, warn_foreign_scope, warn_unverified

    for alias, storage in (getattr(settings, "STORAGES", None) or {}).items():
        if storage.get("BACKEND") == BACKEND:
            obj = f"STORAGES[{alias!r}]"
            options = storage.get("OPTIONS") or {}
            run_check(errors, obj, _validate, options)
            warn_unverified(errors, obj, options.get("managed_identity"), "verify_tls", "W032")
            warn_foreign_scope(errors, obj, options.get("managed_identity"), "scope", NAME)


def _validate(options: dict[str, Any]) -> None:
    from . import AzureManagedIdentityStorage

    AzureManagedIdentityStorage(**options)  # validation only: no credential, no request


def targets(selection: Selection) -> list[Target]:
    uses = lambda entry: entry.get("BACKEND") == BACKEND  # noqa: E731
    return [
        Target(NAME, alias, f"STORAGES[{alias!r}]", probe)
        for alias in aliases("STORAGES", "storage", selection, uses)
    ]


def probe(result: Any, deep: bool) -> None:
    """Shallow: the container's properties. Deep: write, read back, the signed URL (if configured), delete."""
    from django.core.files.base import ContentFile
    from django.core.files.storage import storages

    from ..probes import PROBE_PREFIX, identity_facts

    storage: Any = storages[result.alias]
    result.identity = identity_facts(storage.scope, storage.client_id)
    result.details.update(account_url=storage.account_url, container=storage.azure_container)
    if not deep:
        storage.client.get_container_properties()
        return
    name = f"{PROBE_PREFIX}/{uuid.uuid4().hex}.txt"
    payload = uuid.uuid4().hex.encode()
    saved = storage.save(name, ContentFile(payload))
    try:
        with storage.open(saved) as fh:
            if fh.read() != payload:
                raise RuntimeError("the probe blob read back differs from what was written")
        result.details["write_read"] = True
        if storage.expiration_secs:
            import requests

            verify = (storage.client_options or {}).get("connection_verify", True)
            response = requests.get(storage.url(saved), timeout=10, verify=verify)
            if response.status_code != 200 or response.content != payload:
                raise attach(
                    RuntimeError(f"the signed URL answered {response.status_code}"),
                    signed_url_refused(response.status_code, response.text, result.alias),
                )
            result.details["signed_url"] = True
    finally:
        storage.delete(saved)
    result.details["delete"] = True


def signed_url_refused(status: int, body: str, alias: str) -> ServiceFailure:
    """The signed URL was refused although the identity just wrote, read and deleted the probe blob (so
    its token and data role are fine) and got a user delegation key: the SAS itself was rejected."""
    code = re.search(r"<Code>([^<]+)</Code>", body)
    detail = re.search(r"<AuthenticationErrorDetail>([^<]+)</AuthenticationErrorDetail>", body)
    facts = {"status": status, "code": code.group(1) if code else None}
    if detail:
        facts["detail"] = detail.group(1)[:200]
    return ServiceFailure(
        "signed-url-refused",
        f"Blob Storage refused the signed URL ({status} {facts['code'] or ''}) although the identity wrote, "
        "read and deleted the probe blob with its token: the user delegation SAS was rejected, not the "
        "identity's data role.",
        f"Compare the server's and this machine's clocks (keys start 15 minutes in the past), and check "
        f"STORAGES[{alias!r}]['OPTIONS'] (account_name must be the account the key belongs to). Against "
        "Azurite: an Azurite older than the storage SDK's service version refuses its SAS with 403; install "
        "the pinned one (npm install azurite@3.37.0).",
        facts,
    )


def summary(details: dict[str, Any]) -> str:
    done = "write/read/delete" + (", signed URL" if details.get("signed_url") else "")
    return f"{done} ok in {details.get('container')} at {details.get('account_url')}"


def provider(target: Target) -> Any:
    from django.core.files.storage import storages

    storage: Any = storages[target.alias]  # our backend (BACKEND checked by targets())
    return storage.binding.provider


CHECK_IDS: Final = (
    CheckId("E030", "account key / SAS token / connection string / token_credential set"),
    CheckId("E031", "`STORAGES[…]['OPTIONS']['managed_identity']` malformed"),
    CheckId(
        "E032",
        'http, or a `connection_verify` that does not verify (`False`, `0`, `""`, `None`), to a '
        "non-loopback endpoint",
    ),
    CheckId("W032", "`managed_identity['verify_tls'] = False`: the endpoint is not verified"),
    CheckId("E033", "no storage account (`account_name` / `account_url`), or not an account name"),
    CheckId("E034", "`expiration_secs` negative, not a number, or longer than a delegation key lives"),
    CheckId("E035", "`custom_domain` is not a host name (a scheme or a path)"),
    CheckId("E036", "no `azure_container`"),
)


def provision(plan: Any) -> None:
    """What Azure must have for it (``azure_setup``): .provision."""
    from .provision import provision as steps

    steps(plan, NAME, BACKEND)


SERVICE: Final = Service(
    name=NAME,
    check_ids=CHECK_IDS,
    title="Blob Storage",
    extra="storage",
    scopes=SCOPES,
    check=check,
    targets=targets,
    summary=summary,
    diagnose=diagnose,
    provider=provider,
    arguments=(Argument("storage", "only this storage alias", setting="STORAGES"),),
    provision=provision,
)
