"""What Azure Database for PostgreSQL must have for each ``DATABASES`` alias on our ENGINE
(:mod:`django_azure_mi.provision`): Microsoft Entra authentication on, an Entra admin, the identity's role
(``pgaadauth_create_principal``), and the grants the alias needs.

An alias is read-only when Django mirrors it from another (``TEST['MIRROR']``: a replica) or its session is
read-only (``OPTIONS['options']`` with ``default_transaction_read_only=on``). A replica's role and grants are
made on the primary it mirrors (Azure replicates roles and grants; a replica accepts no DDL). The role is
created by the identity's name when ``--identity-name`` gives it and it is the alias's ``USER``
(``pgaadauth_create_principal`` finds the identity by display name), otherwise bound to its object id
(``pgaadauth_create_principal_with_oid``), which no duplicate display name can confuse.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from typing import Any, Final

from ...provision import Plan, Step, sql_identifier, sql_literal

ROLE_KINDS: Final = ("no-role", "auth-refused")
TLS = tuple[tuple[str, str], ...]  # libpq's TLS parameters as the alias sets them


def provision(plan: Plan, name: str, engines: Sequence[str], azure_hosts: Sequence[str]) -> None:
    """The steps of every alias on one of ``engines`` as service ``name`` (``azure_hosts``: the servers'
    host name suffixes)."""
    from django.conf import settings

    from .config import alias_config

    databases: dict[str, Any] = getattr(settings, "DATABASES", None) or {}
    for alias, database in databases.items():
        if database.get("ENGINE") not in engines:
            continue
        config = alias_config(database, alias)
        if config is None:  # managed_identity enabled=False: a password alias
            continue
        primary = _primary(databases, alias, database)
        read_only = primary is not database or _read_only_session(database)
        _alias_steps(plan, name, alias, config, primary, read_only, databases, tuple(azure_hosts))


def _primary(databases: dict[str, Any], alias: str, database: dict[str, Any]) -> dict[str, Any]:
    mirror = (database.get("TEST") or {}).get("MIRROR")
    return databases.get(mirror, database) if mirror and mirror != alias else database


def _read_only_session(database: dict[str, Any]) -> bool:
    options = str((database.get("OPTIONS") or {}).get("options") or "").replace(" ", "").lower()
    return "default_transaction_read_only=on" in options


def _alias_steps(
    plan: Plan,
    service: str,
    alias: str,
    config: Any,
    primary: dict[str, Any],
    read_only: bool,
    databases: dict[str, Any],
    azure_hosts: tuple[str, ...],
) -> None:
    where = f"DATABASES[{alias!r}]"
    identity = plan.identity(config.client_id)
    host = str(primary.get("HOST") or config.host or "localhost")
    server_address = f"{host}:{primary.get('PORT') or config.port or 5432}"
    dbname = str(primary.get("NAME") or "postgres")
    options = primary.get("OPTIONS") or {}  # the server verified as the alias verifies it (default: OS roots)
    tls = tuple(
        (key, str(options.get(key) or default))
        for key, default in (("sslmode", "verify-full"), ("sslrootcert", "system"))
    )
    server = _server_name(plan, service, host, azure_hosts)
    group = plan.group()
    plan.add(
        Step(
            service, identity.label, "az",
            f"az postgres flexible-server update -g {group} -n {server} --microsoft-entra-auth Enabled",
            f"the server {host} accepts Microsoft Entra tokens", (where,), explains=("auth-refused",),
        )
    )  # fmt: skip
    admin = _admin(plan, service)
    plan.add(
        Step(
            service, identity.label, "az",
            f"az postgres flexible-server microsoft-entra-admin create -g {group} -s {server} "
            f'--display-name "{admin}" --object-id "$PG_ADMIN_OID" --type "$PG_ADMIN_TYPE"',
            "someone is the server's Microsoft Entra admin, who creates the app's role (skip it if the "
            "server has one: run the SQL below as that admin)", (where,),
        )
    )  # fmt: skip
    role = str(config.user)
    principal = plan.principal(identity, service)
    if plan.name_of(identity) == role:
        create = f"pgaadauth_create_principal({sql_literal(role)}, false, false)"
    else:
        oid = f"'{principal}', 'service'"
        create = f"pgaadauth_create_principal_with_oid({sql_literal(role)}, {oid}, false, false)"
    plan.add(
        Step(
            service, identity.label, "sql",
            f"SELECT * FROM {create}\n  WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = "
            f"{sql_literal(role)});",
            f"the role {role!r} ({where}['USER']) signs in with the identity's tokens", (where,),
            server=server_address, database="postgres", runner=_psql(server_address, "postgres", tls),
            explains=ROLE_KINDS,
        )
    )  # fmt: skip
    own_host = str(databases[alias].get("HOST") or host)
    if own_host != host:
        plan.add(
            Step(
                service, identity.label, "note",
                f"{where} reads the replica {own_host}, which takes its roles, grants and Microsoft Entra "
                f"settings from its primary {host} (TEST['MIRROR']): the steps for it run there.", "",
                (where,),
            )
        )  # fmt: skip
    if str(databases[alias].get("ENGINE", "")).endswith(".postgis"):
        _postgis(plan, service, identity.label, where, server, server_address, dbname, tls)
    owner = _writer(primary)
    plan.add(
        Step(
            service, identity.label, "sql", _grants(role, dbname, read_only, owner),
            (f"{role!r} may read the tables of {dbname!r} (a read-only alias)" if read_only else
             f"{role!r} may use {dbname!r} and create its tables (migrations)"), (where,),
            server=server_address, database=dbname, runner=_psql(server_address, dbname, tls),
        )
    )  # fmt: skip


def _postgis(
    plan: Plan, service: str, who: str, where: str, server: str, address: str, dbname: str, tls: TLS
) -> None:
    """GeoDjango's PostGIS: allow-listed on the server, created in the database by its Entra admin (the
    app's role may not create it)."""
    group = plan.group()
    parameter = f"-g {group} -s {server} --name azure.extensions"
    show = f"az postgres flexible-server parameter show {parameter} --query value -o tsv"
    allow = f"az postgres flexible-server parameter set {parameter} --value POSTGIS"
    plan.add(
        Step(
            service, who, "note",
            f"The server must allow-list PostGIS: {show} prints the allow-list; if POSTGIS is not in it, "
            f"set it to that comma-separated list with POSTGIS added ({allow} when it is empty: the value "
            "replaces the list).", "", (where,), mentions=(show, allow),
        )
    )  # fmt: skip
    plan.add(
        Step(
            service, who, "sql", "CREATE EXTENSION IF NOT EXISTS postgis;",
            f"PostGIS exists in {dbname!r} (GeoDjango's ENGINE; the app's role may not create it)", (where,),
            server=address, database=dbname, runner=_psql(address, dbname, tls),
        )
    )  # fmt: skip


def _server_name(plan: Plan, service: str, host: str, azure_hosts: tuple[str, ...]) -> str:
    return server_name(plan, service, host, azure_hosts, "PG_SERVER", "PostgreSQL")


def server_name(
    plan: Plan, service: str, host: str, azure_hosts: tuple[str, ...], variable: str, kind: str
) -> str:
    """The server's name for ``az``: the first label of an Azure host name, else ``"$<variable>"``, asked
    for (a private endpoint, a pooler or a local server stands between)."""
    if host.endswith(azure_hosts):
        return host.split(".", 1)[0]
    plan.add(
        Step(
            service, "", "lookup", "",
            f"the name of the Azure Database for {kind} server behind HOST {host} (not an Azure host name: "
            "a private endpoint, a pooler or a local server)", name=variable,
        ),
        key=("lookup", variable),
    )  # fmt: skip
    return f"${variable}"


def _admin(plan: Plan, service: str) -> str:
    return entra_admin(plan, service, "PG_ADMIN", typed=True)


def entra_admin(plan: Plan, service: str, variable: str, typed: bool = False) -> str:
    """``"$<variable>"``: the server's Microsoft Entra admin (by default the signed-in user), and
    ``$<variable>_OID`` its object id, looked up once. ``typed``: also ``$<variable>_TYPE``, the kind of
    principal the admin is (``User`` unless the environment says ``Group`` or ``ServicePrincipal``)."""
    others = f"{variable}, {variable}_OID and {variable}_TYPE" if typed else f"{variable} and {variable}_OID"
    who = (
        "the server's Microsoft Entra admin (default: you, signed in with az login; another admin, a group "
        f"say: set {others})"
    )
    for name, query, why in (
        (variable, "userPrincipalName", who),
        (f"{variable}_OID", "id", f"the object id of the server's Microsoft Entra admin ({variable})"),
    ):
        plan.add(
            Step(service, "", "lookup", f"az ad signed-in-user show --query {query} -o tsv", why, name=name),
            key=("lookup", name),
        )
    if typed:
        plan.add(
            Step(
                service, "", "lookup", "",
                f"the kind of principal {variable} is: User, Group or ServicePrincipal",
                name=f"{variable}_TYPE", default="User",
            ),
            key=("lookup", f"{variable}_TYPE"),
        )  # fmt: skip
    return f"${variable}"


def _psql(server: str, database: str, tls: TLS) -> str:
    """psql as the server's Entra admin (``$PG_ADMIN``, a lookup: by default the signed-in user; a group's
    display name may have spaces) with a token for the Postgres resource, verifying the server as the alias
    does (``tls``), stopping at the first error. The connection string is the settings' values, quoted for
    libpq and then for the shell: nothing in them expands."""
    host, _, port = server.rpartition(":")
    target = " ".join(
        f"{key}={_libpq_value(value)}"
        for key, value in (("host", host), ("port", port), ("dbname", database), *tls)
    )
    return (
        'PGPASSWORD="$(az account get-access-token --resource-type oss-rdbms --query accessToken -o tsv)" '
        f'psql {shlex.quote(target)} -U "$PG_ADMIN" -v ON_ERROR_STOP=1'
    )


def _libpq_value(value: str) -> str:
    """A value of a libpq connection string: quoted when it is empty or has a space, quote or backslash."""
    if value and not re.search(r"[\s'\\]", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _writer(primary: dict[str, Any]) -> str | None:
    """The role that migrates ``primary``'s database (its own alias's USER), whose future tables a
    read-only role is granted."""
    user = primary.get("USER")
    return str(user) if user else None


def _grants(role: str, dbname: str, read_only: bool, owner: str | None) -> str:
    r, db = sql_identifier(role), sql_identifier(dbname)
    if read_only:
        lines = [
            f"GRANT CONNECT ON DATABASE {db} TO {r};",
            f"GRANT USAGE ON SCHEMA public TO {r};",
            f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {r};",
        ]
        if owner and owner != role:
            lines.append(
                f"ALTER DEFAULT PRIVILEGES FOR ROLE {sql_identifier(owner)} IN SCHEMA public "
                f"GRANT SELECT ON TABLES TO {r};"
            )
        return "\n".join(lines)
    return "\n".join(
        [
            f"GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {r};",
            f"GRANT USAGE, CREATE ON SCHEMA public TO {r};",
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {r};",
            f"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {r};",
        ]
    )
