"""What a Postgres error means and what to do about it (the ENGINE's connect errors and the probe's)."""

from __future__ import annotations

import re
from typing import Any, Final

from ...diagnostics import ServiceFailure, generic, text_of
from ..signin import refusal, token_facts

AUTH_KINDS: Final = frozenset({"no-role", "auth-refused", "token-expired", "wrong-audience"})
_AUTH = ("password authentication failed", "access token", "no password supplied")
_NO_ROLE = re.compile(r'role "[^"]*" does not exist')


def diagnose(exc: BaseException, config: Any, token: Any = None) -> ServiceFailure:
    """A Postgres connect error. ``config``: the alias's AliasConfig; ``token``: the core Token used."""
    server = text_of(exc)
    lowered = server.lower()
    where = f"DATABASES[{config.alias!r}]"
    facts = token_facts(token)
    create = "pgaadauth_create_principal('<identity name>', false, false)"
    role = (
        f"{where}['USER'] must be the identity's Postgres role exactly as created with {create} by a "
        "Microsoft Entra admin (case-sensitive; usually the managed identity's name)"
    )
    refused = f"Postgres refused the token for role {config.user!r}" + (
        f" (the identity's name is {facts['name']!r})" if facts["name"] else ""
    )
    aud = str(facts["aud"] or "")
    if "another resource" in lowered or (aud and "ossrdbms" not in aud):  # the server's stated reason first
        return ServiceFailure(
            "wrong-audience",
            f"Postgres refused the token because it is for another resource (aud {aud or 'unknown'}), not "
            "for Azure Database for PostgreSQL.",
            f"Remove {where}['OPTIONS']['managed_identity']['scope'] (the default is the server's cloud's "
            "https://ossrdbms-aad.database.windows.net/.default) or set it to that scope.",
            facts,
        )
    if _NO_ROLE.search(lowered):
        return ServiceFailure("no-role", f"{refused}: the role does not exist.", f"{role}.", facts)
    if "expired" in lowered and any(needle in lowered for needle in _AUTH):
        return ServiceFailure(
            "token-expired",
            "The token expired before Postgres checked it.",
            "Check the machine's clock (NTP).",
            facts,
        )
    if any(needle in lowered for needle in _AUTH):
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
        return tls_failure(config.alias)
    return generic("Postgres", where, exc)


def tls_failure(alias: str) -> ServiceFailure:
    return ServiceFailure(
        "tls",
        "TLS problem between Django and Postgres.",
        f"Azure requires TLS: keep DATABASES[{alias!r}]['OPTIONS']['sslmode'] at 'require' or 'verify-full' "
        "(with 'sslrootcert').",
    )


def refusal_message(failure: ServiceFailure, config: Any, exc: BaseException) -> tuple[str, ServiceFailure]:
    """The message of the OperationalError raised for a refused sign-in, and the failure to attach."""
    return refusal(failure, config, exc, "Postgres", 5432, "role")
