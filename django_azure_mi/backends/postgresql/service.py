"""Postgres as a service of django-azure-mi (:mod:`django_azure_mi.services`): its scopes, checks, probe,
diagnosis and warm-up. Imports no driver: the checks report a missing one (E006)."""

from __future__ import annotations

import os
from typing import Any, Final

from django.core import checks

from ...services import Argument, CheckId, Selection, Service, Target
from ..databases import check_databases, database_targets, provider, round_trip

NAME: Final = "postgres"
ENGINE: Final = "django_azure_mi.backends.postgresql"
POSTGIS_ENGINE: Final = "django_azure_mi.backends.postgis"  # GeoDjango's, on the same sign-in
ENGINES: Final = (ENGINE, POSTGIS_ENGINE)
SCOPES: Final = {
    "public": "https://ossrdbms-aad.database.windows.net/.default",
    "usgovernment": "https://ossrdbms-aad.database.usgovcloudapi.net/.default",
    "china": "https://ossrdbms-aad.database.chinacloudapi.cn/.default",
}
_AZURE_HOSTS: Final = (".postgres.database.azure.com", ".postgres.database.usgovcloudapi.net",
                       ".postgres.database.chinacloudapi.cn")  # fmt: skip


# ---------------------------------------------------------------------------------------------- checks


def check(errors: list[checks.CheckMessage]) -> None:
    stock = {"postgresql": ENGINE, "postgis": POSTGIS_ENGINE}
    azure = ("W010", _AZURE_HOSTS, "Azure Database for PostgreSQL")
    check_databases(errors, NAME, stock, _validate, "W011", azure)


def _validate(alias: str, database: dict[str, Any]) -> None:
    from .config import alias_config

    alias_config(database, alias)


# ----------------------------------------------------------------------------------------------- probe


def targets(selection: Selection) -> list[Target]:
    return database_targets(NAME, ENGINES, selection, probe)


def probe(result: Any, deep: bool) -> None:
    """``select current_user, version()`` over a new connection; TLS as the client (libpq) sees it."""
    from django.db import connections

    from ...diagnostics import attach
    from ...options import is_remote
    from .config import targets as hosts
    from .diagnosis import tls_failure

    (user, version), (tls, tls_version) = round_trip(result, "select current_user, version()", _client_tls)
    result.details.update(
        current_user=user, server=" ".join(str(version).split()[:2]), tls=tls, tls_version=tls_version
    )
    config = connections[result.alias].alias_config  # type: ignore[attr-defined]  # our DatabaseWrapper
    settings_dict = connections[result.alias].settings_dict
    if config is not None and not tls and is_remote(hosts(settings_dict, os.environ)):
        raise attach(RuntimeError("connected without TLS"), tls_failure(config.alias))


def _client_tls(raw: Any) -> tuple[bool, str | None]:
    """Does this driver connection use TLS, and which version? Asked of the client (libpq), which sees the
    link it signed in over; the server's pg_stat_ssl would describe a pooler's or gateway's link instead."""
    pgconn = getattr(raw, "pgconn", None)  # psycopg 3 (its PGconn has no ssl_attribute: no version)
    if pgconn is not None:
        return bool(pgconn.ssl_in_use), None
    info = raw.info  # psycopg2
    used = bool(info.ssl_in_use)
    return used, info.ssl_attribute("protocol") if used else None


def summary(details: dict[str, Any]) -> str:
    tls = (
        " ".join(filter(None, ["TLS", details.get("tls_version")]))
        if details.get("tls")
        else "no TLS (loopback)"
    )
    return f"user {details.get('current_user')}, {tls}, {details.get('server')}"


CHECK_IDS: Final = (
    CheckId("E010", "`DATABASES[…]['OPTIONS']['managed_identity']` malformed"),
    CheckId("E011", "`PASSWORD` (or `OPTIONS['password']`) set with a managed identity"),
    CheckId("E012", "`USER` empty"),
    CheckId(
        "E013",
        "an `sslmode` that is clear or unverified toward a non-loopback target (judged on the "
        "effective targets), or a libpq parameter dbshell cannot hand to psql",
    ),
    CheckId("E014", "`OPTIONS['pool']` with psycopg-pool < 3.3"),
    CheckId("E015", "`sslrootcert='system'` (the default) with libpq < 16 (the driver's or psql's)"),
    CheckId("E016", "a password in a database URL, or `register_scheme()` without dj-database-url"),
    CheckId("W010", "a `*.postgres.database.azure.com` host without password, not using our ENGINE"),
    CheckId("W011", "`managed_identity['verify_tls'] = False`: the server is not verified"),
)


def provision(plan: Any) -> None:
    """What Azure must have for it (``azure_setup``): .provision."""
    from .provision import provision as steps

    steps(plan, NAME, ENGINES, _AZURE_HOSTS)


SERVICE: Final = Service(
    name=NAME,
    check_ids=CHECK_IDS,
    title="Postgres",
    extra="postgres",
    scopes=SCOPES,
    check=check,
    targets=targets,
    summary=summary,
    provider=provider,
    arguments=(Argument("database", "only this database alias", setting="DATABASES"),),
    provision=provision,
)
