"""What went wrong and how to fix it, written once: the system checks, the errors adapters raise,
``azure_check`` and the readiness view all read these objects instead of parsing message text.

* :class:`~django_azure_mi.core.errors.Problem` - a misconfiguration (check id, problem, fix). A
  :class:`SettingError` carries one; ``manage.py check`` shows ``problem`` as the message and ``fix`` as
  the hint.
* :class:`ServiceFailure` - a service or the identity endpoint refused or failed at run time: ``kind``,
  ``diagnosis``, ``fix`` and the ``facts`` it was judged from. Each service has one ``diagnose_*``
  function; an adapter raising an error attaches the failure it built (:func:`attach`), and a probe reads
  it back (:func:`failure_of`) or diagnoses an error that came straight from a driver or SDK.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

from .core.errors import ConfigurationError, Problem

__all__ = ["Problem", "ServiceFailure", "SettingError", "attach", "failure_of", "setting_errors"]


class SettingError(ImproperlyConfigured):
    """A misconfiguration, with the id ``manage.py check`` reports it under (``django_azure_mi.E0xx``).
    ``SettingError("E020", "what is wrong, naming the setting.", "How to fix it.")`` or
    ``SettingError(problem)``."""

    def __init__(self, check_id: str | Problem, problem: str = "", fix: str = "") -> None:
        self.problem = check_id if isinstance(check_id, Problem) else Problem(check_id, problem, fix)
        super().__init__(self.problem.message)

    @property
    def check_id(self) -> str:
        return self.problem.check_id


@contextlib.contextmanager
def setting_errors() -> Iterator[None]:
    """Re-raise the core's ConfigurationError as a SettingError (an ImproperlyConfigured)."""
    try:
        yield
    except ConfigurationError as exc:
        raise SettingError(exc.problem) from None


@dataclass(frozen=True)
class ServiceFailure:
    """A diagnosed run-time failure: ``kind`` (a short stable id such as ``"no-role"``), ``diagnosis``
    (what is wrong), ``fix`` (what to do), ``facts`` (what it was judged from; never a secret)."""

    kind: str
    diagnosis: str
    fix: str
    facts: dict[str, Any] = field(default_factory=dict)


def attach(exc: BaseException, failure: ServiceFailure) -> BaseException:
    """Attach ``failure`` to ``exc`` (the exception an adapter is about to raise) and return it."""
    exc.azure_failure = failure  # type: ignore[attr-defined]
    return exc


def failure_of(exc: BaseException) -> ServiceFailure | None:
    """The failure an adapter attached to ``exc`` (or to the exception it wraps: Django re-raises driver
    errors as its own, with the original as ``__cause__``); a SettingError's Problem as a failure."""
    cause: BaseException | None = exc
    for _ in range(5):
        if cause is None:
            break
        found = getattr(cause, "azure_failure", None)
        if isinstance(found, ServiceFailure):
            return found
        cause = cause.__cause__
    problem = getattr(exc, "problem", None)
    if isinstance(problem, Problem):
        return ServiceFailure(
            "misconfiguration",
            f"Misconfiguration (django_azure_mi.{problem.check_id}): {problem.problem}",
            problem.fix or "See `manage.py check`.",
        )
    return None


# ---------------------------------------------------------------------------------------------- run time
# Each function judges an exception raised by a driver, an SDK or the token core (their text and codes,
# never a message of ours) and says what is wrong and what to do.

_UNREACHABLE = ("refused", "resolve", "unreachable", "name or service not known", "timed out")


def _text(exc: BaseException) -> str:
    from .core.errors import redact

    return redact(" ".join(str(exc).split()))


def diagnose_identity(exc: BaseException) -> ServiceFailure | None:
    """The token core could not get a token (``TokenUnavailableError``); None for other errors."""
    from .core.errors import TokenUnavailableError

    if not isinstance(exc, TokenUnavailableError):
        return None
    upstream = (exc.last_error or "").lower()  # azure-identity's words
    facts = {"scope": exc.scope, "identity": exc.identity, "last_error": exc.last_error}
    if "identity not found" in upstream or " 400" in upstream:
        return ServiceFailure(
            "unknown-identity",
            "The identity endpoint does not know this identity.",
            "Assign the user-assigned identity to this app (az webapp identity assign / az containerapp "
            "identity assign --user-assigned <id>) and set AZURE_MANAGED_IDENTITY['CLIENT_ID'] to its "
            "client id.",
            facts,
        )
    return ServiceFailure(
        "no-identity-endpoint",
        "No token: the managed identity endpoint (IMDS) is unreachable or refused - this process is "
        "probably not running on Azure, or the app has no managed identity.",
        "On Azure: enable the identity (az webapp identity assign). Locally: set "
        "AZURE_MANAGED_IDENTITY = {'CREDENTIAL': 'default'} and run `az login`.",
        facts,
    )


def timeout_failure(service: str, where: str, seconds: float) -> ServiceFailure:
    return ServiceFailure(
        "timeout",
        f"{service} did not answer in time.",
        f"Check the host/port in {where}, the network path (VNet, private endpoint, firewall rules).",
        {"timeout_s": seconds},
    )


def _generic(service: str, where: str, exc: BaseException) -> ServiceFailure:
    text = _text(exc).lower()
    if "ssl" in text or "certificate" in text:
        return ServiceFailure(
            "tls",
            "TLS handshake failed.",
            "Check the server certificate and the CA bundle the client trusts.",
        )
    if any(word in text for word in _UNREACHABLE):
        return ServiceFailure(
            "unreachable",
            f"{service} is unreachable.",
            f"Check the host and port in {where} and the network path.",
        )
    return ServiceFailure("error", f"The {service} probe failed.", "See the error above.")


# ------------------------------------------------------------------------------------------- Postgres

POSTGRES_AUTH_KINDS = frozenset({"no-role", "auth-refused", "token-expired"})
_PG_AUTH = ("password authentication failed", "access token", "no password supplied")
_PG_NO_ROLE = re.compile(r'role "[^"]*" does not exist')


def diagnose_postgres(exc: BaseException, identity: Any, token: Any = None) -> ServiceFailure:
    """A Postgres connect error. ``identity``: the alias's ManagedIdentity; ``token``: the core Token used."""
    server = _text(exc)
    lowered = server.lower()
    where = f"DATABASES[{identity.alias!r}]"
    claims = token.claims if token is not None else {}
    resource_id = str(claims.get("xms_mirid") or "")
    facts: dict[str, Any] = {
        "aud": claims.get("aud"),
        "oid": claims.get("oid"),
        "expires_in": int(token.expires_on - time.time()) if token is not None else None,
        "name": resource_id.rstrip("/").rsplit("/", 1)[-1] or None,
    }
    create = "pgaadauth_create_principal('<identity name>', false, false)"
    role = (
        f"{where}['USER'] must be the identity's Postgres role exactly as created with {create} by a "
        "Microsoft Entra admin (case-sensitive; usually the managed identity's name)"
    )
    refused = f"Postgres refused the token for role {identity.user!r}" + (
        f" (the identity's name is {facts['name']!r})" if facts["name"] else ""
    )
    if _PG_NO_ROLE.search(lowered):
        return ServiceFailure("no-role", f"{refused}: the role does not exist.", f"{role}.", facts)
    if "expired" in lowered and any(needle in lowered for needle in _PG_AUTH):
        return ServiceFailure(
            "token-expired",
            "The token expired before Postgres checked it.",
            "Check the machine's clock (NTP).",
            facts,
        )
    if any(needle in lowered for needle in _PG_AUTH):
        return ServiceFailure(
            "auth-refused",
            f"{refused}.",
            f"{role}; check too that the server has Microsoft Entra authentication enabled, that the scope "
            f"matches the server's cloud (AZURE_MANAGED_IDENTITY['CLOUD'] or "
            f"{where}['OPTIONS']['managed_identity']['scope']), and that a read replica has the same "
            "principal.",
            facts,
        )
    if "ssl" in lowered or "tls" in lowered or "no encryption" in lowered:
        return postgres_tls(identity.alias)
    return _generic("database", where, exc)


def postgres_tls(alias: str) -> ServiceFailure:
    return ServiceFailure(
        "tls",
        "TLS problem between Django and Postgres.",
        f"Azure requires TLS: keep DATABASES[{alias!r}]['OPTIONS']['sslmode'] at 'require' or 'verify-full' "
        "(with 'sslrootcert').",
    )


def postgres_message(failure: ServiceFailure, identity: Any, exc: BaseException) -> str:
    """The message of the OperationalError raised for a refused sign-in (never the token)."""
    facts = ", ".join(
        f"{name}={failure.facts.get(name)}"
        for name in ("aud", "oid", "expires_in")
        if failure.facts.get(name) is not None
    )
    return (
        f"Postgres at {identity.host or 'localhost'}:{identity.port or 5432} rejected the Microsoft Entra "
        f"token for role {identity.user!r} ({identity.provider.identity}; scope {identity.scope}; {facts}). "
        f"Server said: {_text(exc)} {failure.diagnosis} {failure.fix}"
    )


# ---------------------------------------------------------------------------------------------- Redis


def diagnose_redis(
    exc: BaseException | None, where: Any, username: str | None = None, oid: str | None = None
) -> ServiceFailure:
    """A Redis error (``exc``), or ``exc=None`` for a USERNAME that is not the token's object id. ``where``:
    the cache (``CACHES['default']``), or the client's EntraSettings, which name its own settings."""
    from redis.exceptions import AuthenticationError

    if isinstance(where, str):
        username_key = f"{where}['OPTIONS']['MANAGED_IDENTITY']['USERNAME']"
        location, service = f"{where}['LOCATION']", where
    else:
        username_key, location, service = where.key("username"), where.location, where.location
    facts = {"username": username, "oid": oid}
    access = ServiceFailure(
        "access-refused",
        "Redis refused the identity: USERNAME is not the identity's object id, or it has no access policy.",
        f"Leave {username_key} unset (the token's oid is used) or set it "
        "to the token's oid, and give that oid an access policy: az redis access-policy-assignment create "
        "--object-id <oid> --access-policy-name 'Data Owner' ...",
        facts,
    )
    if exc is None or isinstance(exc, AuthenticationError):
        if username and oid and username != oid:
            return ServiceFailure(
                "username-mismatch",
                f"{username_key} is {username!r} but the token's object id is "
                f"{oid!r} (Redis would answer WRONGPASS): they must match.",
                access.fix,
                facts,
            )
        return access
    text = _text(exc).lower()
    if any(word in text for word in ("ssl", "tls", "connection closed", "reset by peer")):
        return ServiceFailure(
            "tls",
            "TLS problem between Django and Redis.",
            f"Use rediss:// in {location} (port 6380 for Azure Cache for Redis, 10000 for Azure "
            "Managed Redis).",
        )
    return _generic("cache", service, exc)


# --------------------------------------------------------------------------------------------- Storage

STORAGE_ROLES = (
    "Give the identity the 'Storage Blob Data Contributor' role on the storage account or container "
    "(and 'Storage Blob Delegator' for signed URLs): az role assignment create --assignee <principal id> "
    "--role 'Storage Blob Data Contributor' --scope <storage account id>. New assignments take a few minutes."
)


def diagnose_storage(exc: BaseException, where: str) -> ServiceFailure:
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
            "no-role", "The identity has no data role on the storage account.", STORAGE_ROLES, facts
        )
    if code == "ContainerNotFound":
        return ServiceFailure(
            "no-container",
            "The container does not exist.",
            "Create it: az storage container create --auth-mode login ...",
            facts,
        )
    return _generic("storage", where, exc)


# ------------------------------------------------------------------------------------------- Key Vault


def diagnose_keyvault(exc: BaseException, url: str, name: str | None = None) -> ServiceFailure:
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
            "Check AZURE_KEY_VAULT_URL, DNS/private endpoint and the vault's firewall.",
        )
    return _generic("keyvault", "AZURE_KEY_VAULT_URL", exc)


_BY_SERVICE = {
    "cache": lambda exc, where: diagnose_redis(exc, where),
    "storage": diagnose_storage,
}


def diagnose(service: str, exc: BaseException, where: str) -> ServiceFailure:
    """What a probe of ``service`` (named ``where`` in fixes) shows: the failure an adapter attached, else
    the identity's, else the service's own diagnosis of a driver/SDK error."""
    found = failure_of(exc) or diagnose_identity(exc)
    if found is not None:
        return found
    judge = _BY_SERVICE.get(service)
    return judge(exc, where) if judge is not None else _generic(service, where, exc)
