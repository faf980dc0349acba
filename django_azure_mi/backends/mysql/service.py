"""MySQL as a service of django-azure-mi (:mod:`django_azure_mi.services`): its scopes, checks and probe.
Imports no driver: the checks report a missing one. ``azure_check --database ALIAS`` selects its aliases as
it selects Postgres's."""

from __future__ import annotations

from typing import Any, Final

from django.core import checks

from ...services import CheckId, Selection, Service, Target, aliases

NAME: Final = "mysql"
ENGINE: Final = "django_azure_mi.backends.mysql"
SCOPES: Final = {  # Azure Database for MySQL takes the same resource's tokens as PostgreSQL
    "public": "https://ossrdbms-aad.database.windows.net/.default",
    "usgovernment": "https://ossrdbms-aad.database.usgovcloudapi.net/.default",
    "china": "https://ossrdbms-aad.database.chinacloudapi.cn/.default",
}
_AZURE_HOSTS: Final = (".mysql.database.azure.com", ".mysql.database.usgovcloudapi.net",
                       ".mysql.database.chinacloudapi.cn")  # fmt: skip


def check(errors: list[checks.CheckMessage]) -> None:
    from django.conf import settings

    from ...checks import run_check, warn_foreign_scope, warn_unverified

    for alias, database in (getattr(settings, "DATABASES", None) or {}).items():
        engine = database.get("ENGINE", "")
        obj = f"DATABASES[{alias!r}]"
        if engine == ENGINE:
            run_check(errors, obj, _validate, alias, database)
            option = (database.get("OPTIONS") or {}).get("managed_identity")
            warn_unverified(errors, obj, option, "verify_tls", "W071")
            warn_foreign_scope(errors, obj, option, "scope", NAME)
        elif engine.endswith(".mysql") and not database.get("PASSWORD"):
            host = str(database.get("HOST") or "")
            if host.endswith(_AZURE_HOSTS):
                errors.append(
                    checks.Warning(
                        f"{obj} points at Azure Database for MySQL ({host}) without a PASSWORD, with ENGINE "
                        f"{engine!r}.",
                        hint=f"To sign in with the managed identity, set ENGINE to {ENGINE!r}.",
                        obj=obj,
                        id="django_azure_mi.W070",
                    )
                )


def _validate(alias: str, database: dict[str, Any]) -> None:
    from .config import alias_config

    try:
        import MySQLdb  # noqa: F401  # mysqlclient, or PyMySQL after pymysql.install_as_MySQLdb()
    except ImportError:
        from ...diagnostics import SettingError

        raise SettingError(
            "E075",
            f"DATABASES[{alias!r}] uses {ENGINE!r}, but neither mysqlclient nor PyMySQL is importable as "
            "MySQLdb.",
            "pip install mysqlclient, or pip install 'django-azure-mi[mysql]' (PyMySQL) and call "
            "pymysql.install_as_MySQLdb() in settings.py.",
        ) from None
    alias_config(database, alias)


def targets(selection: Selection) -> list[Target]:
    uses = lambda entry: entry.get("ENGINE") == ENGINE  # noqa: E731
    return [
        Target(NAME, alias, f"DATABASES[{alias!r}]", probe)
        for alias in aliases("DATABASES", "database", selection, uses)
    ]


def probe(result: Any, deep: bool) -> None:
    """``SELECT current_user(), version()`` over a new connection; TLS as the client sees it."""
    from django.db import connections

    from ...probes import identity_facts

    connection: Any = connections[result.alias]
    config = connection.alias_config
    if config is not None:
        result.identity = identity_facts(config.scope, config.client_id)
    result.details["user"] = connection.settings_dict.get("USER")
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_user(), version()")
            user, version = cursor.fetchone()
            tls = _client_tls(connection.connection)
    finally:
        connection.close()
    result.details.update(current_user=user, server=str(version), tls=tls)


def _client_tls(raw: Any) -> str | None:
    """The TLS version the client negotiated (None: no TLS), asked of the driver: the server's own view
    would describe a proxy's or gateway's link instead."""
    sock = getattr(raw, "_sock", None)  # PyMySQL: its socket, an SSLSocket over TLS
    if sock is not None:
        version = getattr(sock, "version", None)
        return version() if callable(version) else None
    cipher = getattr(raw, "get_ssl_cipher", None)  # mysqlclient >= 2.2
    return str(cipher()) if callable(cipher) and cipher() else None


def summary(details: dict[str, Any]) -> str:
    tls = details.get("tls") or "no TLS (loopback)"
    return f"user {details.get('current_user')}, {tls}, {details.get('server')}"


def provider(target: Target) -> Any:
    from django.db import connections

    config = connections[target.alias].alias_config  # type: ignore[attr-defined]  # our DatabaseWrapper
    return config.provider if config is not None else None


CHECK_IDS: Final = (
    CheckId("E070", "`DATABASES[…]['OPTIONS']['managed_identity']` malformed (MySQL)"),
    CheckId("E071", "`PASSWORD` (or `OPTIONS['password']`/`['passwd']`) set with a managed identity (MySQL)"),
    CheckId("E072", "`USER` empty (MySQL)"),
    CheckId(
        "E073",
        "TLS off, or not verified, toward a non-loopback MySQL (`ssl_mode`, `ssl_disabled`, "
        "`ssl_verify_cert`/`ssl_verify_identity`)",
    ),
    CheckId("E074", "no CA bundle file to verify the server with (mysqlclient)"),
    CheckId("E075", "neither mysqlclient nor PyMySQL importable as `MySQLdb`"),
    CheckId("W070", "a `*.mysql.database.azure.com` host without password, not using our ENGINE"),
    CheckId("W071", "`managed_identity['verify_tls'] = False` (MySQL): the server is not verified"),
)


SERVICE: Final = Service(
    name=NAME,
    check_ids=CHECK_IDS,
    title="MySQL",
    extra="mysql",
    scopes=SCOPES,
    check=check,
    targets=targets,
    summary=summary,
    provider=provider,
)
