"""What the database services' descriptors share (``backends/*/service.py``): the system checks of the
``DATABASES`` aliases on our ENGINEs (and of stock ones pointed at an Azure server without a password), the
probe targets, the probe's round trip and the token provider to warm up. Imports no driver."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from django.core import checks

from ..services import Selection, Target, aliases


def check_databases(
    errors: list[checks.CheckMessage],
    service: str,
    ours: Mapping[str, str],
    validate: Callable[[str, dict[str, Any]], None],
    unverified_id: str,
    azure: tuple[str, tuple[str, ...], str],
) -> None:
    """Every alias on one of ``ours`` (stock ENGINE suffix -> our ENGINE) is validated (``validate``) and
    warned about an unverified server (``unverified_id``) or another service's scope; a stock ENGINE aimed
    at an Azure host without a password gets warning ``azure`` = (its id, the hosts' suffixes, the
    server's name)."""
    from django.conf import settings

    from ..checks import run_check, warn_foreign_scope, warn_unverified

    warning_id, hosts, server = azure
    for alias, database in (getattr(settings, "DATABASES", None) or {}).items():
        engine = str(database.get("ENGINE", ""))
        obj = f"DATABASES[{alias!r}]"
        if engine in ours.values():
            run_check(errors, obj, validate, alias, database)
            option = (database.get("OPTIONS") or {}).get("managed_identity")
            warn_unverified(errors, obj, option, "verify_tls", unverified_id)
            warn_foreign_scope(errors, obj, option, "scope", service)
            continue
        suffix = next((s for s in ours if engine.endswith(f".{s}")), None)
        host = str(database.get("HOST") or "")
        if suffix is not None and not database.get("PASSWORD") and host.endswith(hosts):
            errors.append(
                checks.Warning(
                    f"{obj} points at {server} ({host}) without a PASSWORD, with ENGINE {engine!r}.",
                    hint=f"To sign in with the managed identity, set ENGINE to {ours[suffix]!r}.",
                    obj=obj,
                    id=f"django_azure_mi.{warning_id}",
                )
            )


def database_targets(service: str, engines: Sequence[str], selection: Selection, probe: Any) -> list[Target]:
    """The aliases on ``engines`` that ``selection`` wants (``azure_check --database``)."""
    uses = lambda entry: entry.get("ENGINE") in engines  # noqa: E731
    return [
        Target(service, alias, f"DATABASES[{alias!r}]", probe)
        for alias in aliases("DATABASES", "database", selection, uses)
    ]


def round_trip(result: Any, sql: str, tls_of: Callable[[Any], Any]) -> tuple[Any, Any]:
    """The probe's part every database shares: the identity it signs in as, then ``sql`` (two columns)
    over a new connection, closed after; returns the row and ``tls_of(the driver's connection)``."""
    from django.db import connections

    from ..probes import identity_facts

    connection: Any = connections[result.alias]
    config = connection.alias_config
    if config is not None:
        result.identity = identity_facts(config.scope, config.client_id)
    result.details["user"] = connection.settings_dict.get("USER")
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            row = cursor.fetchone()
            tls = tls_of(connection.connection)
    finally:
        connection.close()
    return row, tls


def provider(target: Target) -> Any:
    """The token provider of an alias on our ENGINE (warm-up)."""
    from django.db import connections

    config = connections[target.alias].alias_config  # type: ignore[attr-defined]  # our DatabaseWrapper
    return config.provider if config is not None else None
