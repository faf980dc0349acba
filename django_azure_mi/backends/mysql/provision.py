"""What Azure Database for MySQL must have for each ``DATABASES`` alias on our ENGINE
(:mod:`django_azure_mi.provision`): a Microsoft Entra admin (the server reads the directory through a
user-assigned identity of its own), the identity's Entra user (``CREATE AADUSER 'name' IDENTIFIED BY
'<client id>'``, the way Microsoft documents for a managed identity) and its grants: everything on the
alias's database, or ``SELECT`` for a read-only alias (a replica, ``TEST['MIRROR']``), made on its primary.
"""

from __future__ import annotations

import shlex
from typing import Any, Final

from ...provision import Plan, Step, sql_identifier, sql_literal
from ..postgresql.provision import entra_admin, server_name

USER_KINDS: Final = ("auth-refused",)


def provision(plan: Plan, name: str, engine: str, azure_hosts: tuple[str, ...]) -> None:
    from django.conf import settings

    from .config import alias_config

    databases: dict[str, Any] = getattr(settings, "DATABASES", None) or {}
    for alias, database in databases.items():
        if database.get("ENGINE") != engine:
            continue
        config = alias_config(database, alias, client="pymysql")  # the driver changes only its TLS options
        if config is None:
            continue
        mirror = (database.get("TEST") or {}).get("MIRROR")
        primary = databases.get(mirror, database) if mirror and mirror != alias else database
        _alias_steps(plan, name, alias, config, primary, primary is not database, azure_hosts)


def _alias_steps(
    plan: Plan, service: str, alias: str, config: Any, primary: dict[str, Any], read_only: bool,
    azure_hosts: tuple[str, ...],
) -> None:  # fmt: skip
    where = f"DATABASES[{alias!r}]"
    identity = plan.identity(config.client_id)
    host = str(primary.get("HOST") or config.host or "localhost")
    port = str(primary.get("PORT") or config.port or 3306)
    dbname = str(primary.get("NAME") or "")
    group = plan.group()
    server = server_name(plan, service, host, azure_hosts, "MYSQL_SERVER", "MySQL")
    admin = entra_admin(plan, service, "MYSQL_ADMIN")
    plan.add(
        Step(
            service, "", "lookup", "",
            "the user-assigned identity the MySQL server reads Microsoft Entra ID with (its resource id or "
            "name; it needs the Directory Readers role, or Graph's User.Read.All, GroupMember.Read.All and "
            "Application.Read.All)", name="MYSQL_SERVER_IDENTITY",
        ),
        key=("lookup", "MYSQL_SERVER_IDENTITY"),
    )  # fmt: skip
    plan.add(
        Step(
            service, identity.label, "az",
            f'az mysql flexible-server ad-admin create -g {group} -s {server} -u "{admin}" '
            f'-i "${{MYSQL_ADMIN_OID}}" --identity "$MYSQL_SERVER_IDENTITY"',
            "someone is the server's Microsoft Entra admin, who creates the app's Entra user (skip it if the "
            "server has one: run the SQL below as that admin)", (where,), explains=USER_KINDS,
        )
    )  # fmt: skip
    client_id = _client_id(plan, identity, service)
    user = str(config.user)
    runner = (
        'MYSQL_PWD="$(az account get-access-token --resource-type oss-rdbms --query accessToken -o tsv)" '
        f'mysql -h {shlex.quote(host)} -P {shlex.quote(port)} --user="{admin}" --enable-cleartext-plugin '
        f"--ssl-mode=VERIFY_IDENTITY --ssl-ca={_ca_file(plan, service, primary)}"
    )
    plan.add(
        Step(
            service, identity.label, "sql",
            "SET aad_auth_validate_oids_in_tenant = OFF;\n"
            f"CREATE AADUSER {sql_literal(user)} IDENTIFIED BY {client_id};",
            f"the Entra user {user!r} ({where}['USER']) signs in with the identity's tokens (skip it if it "
            "exists)", (where,), server=f"{host}:{port}", database="", runner=runner, explains=USER_KINDS,
        )
    )  # fmt: skip
    rights = "SELECT" if read_only else "ALL PRIVILEGES"
    target = f"{sql_identifier(dbname, '`')}.*" if dbname else "*.*"
    plan.add(
        Step(
            service, identity.label, "sql",
            f"GRANT {rights} ON {target} TO {sql_literal(user)}@'%';",
            (f"{user!r} may read {dbname!r} (a read-only alias)" if read_only
             else f"{user!r} may use {dbname!r} and create its tables (migrations)"), (where,),
            server=f"{host}:{port}", database=dbname, runner=runner,
        )
    )  # fmt: skip


# Where the OS keeps its trust store as one file (Debian and Ubuntu, Red Hat and Fedora, Alpine and macOS)
SYSTEM_CA_FILES: Final = (
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
)


def _ca_file(plan: Plan, service: str, primary: dict[str, Any]) -> str:
    """The CA file the mysql client verifies the server with, as the alias does: the one its OPTIONS give,
    else the OS trust store, which holds Azure's roots (``$MYSQL_SSL_CA``, looked up where the script runs).
    Oracle's client refuses ``VERIFY_IDENTITY`` without one ("CA certificate is required if ssl-mode is
    VERIFY_CA or VERIFY_IDENTITY"); it has no default."""
    given = ((primary.get("OPTIONS") or {}).get("ssl") or {}).get("ca")
    if given:
        return shlex.quote(str(given))
    files = " ".join(SYSTEM_CA_FILES)
    plan.add(
        Step(
            service, "", "lookup", f"ls {files} 2>/dev/null | head -n 1",
            "the CA bundle the mysql client verifies the server with: the OS trust store, which holds "
            "Azure's roots (Oracle's client has no default)", name="MYSQL_SSL_CA",
        ),
        key=("lookup", "MYSQL_SSL_CA"),
    )  # fmt: skip
    return '"${MYSQL_SSL_CA:?no CA bundle file found: set MYSQL_SSL_CA to one}"'


def _client_id(plan: Plan, identity: Any, service: str) -> str:
    """The identity's client (application) id as a SQL literal: a user-assigned one's from the settings; the
    system-assigned one's looked up from its object id."""
    if identity.client_id:
        return sql_literal(identity.client_id)
    principal = plan.principal(identity, service)
    plan.add(
        Step(
            service, identity.label, "lookup", f'az ad sp show --id "{principal}" --query appId -o tsv',
            "the system-assigned identity's client (application) id, which CREATE AADUSER takes",
            name="APP_ID_SYSTEM",
        ),
        key=("lookup", "APP_ID_SYSTEM"),
    )  # fmt: skip
    return "'$APP_ID_SYSTEM'"
