"""MySQL as a service of django-azure-mi (:mod:`django_azure_mi.services`): its scopes, checks and probe.
Imports no driver: the checks report a missing one. ``azure_check --database ALIAS`` selects its aliases as
it selects Postgres's."""

from __future__ import annotations

from typing import Any, Final

from django.core import checks

from ...services import CheckId, Selection, Service, Target
from ..databases import check_databases, database_targets, provider, round_trip

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
    azure = ("W070", _AZURE_HOSTS, "Azure Database for MySQL")
    check_databases(errors, NAME, {"mysql": ENGINE}, _validate, "W071", azure)


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
    return database_targets(NAME, (ENGINE,), selection, probe)


def probe(result: Any, deep: bool) -> None:
    """``SELECT current_user(), version()`` over a new connection; TLS as the client sees it."""
    from django.db import connections

    (user, version), tls = round_trip(
        result, "SELECT current_user(), version()", lambda raw: _client_tls(raw, connections[result.alias])
    )
    result.details.update(current_user=user, server=str(version), tls=tls)


def _client_tls(raw: Any, connection: Any) -> str | None:
    """The TLS version the client negotiated (None: no TLS), asked of the driver: the server's own view
    would describe a proxy's or gateway's link instead. mysqlclient doesn't say (2.3 has no call for it):
    what its connection was told to require, which it refuses to connect without."""
    sock = getattr(raw, "_sock", None)  # PyMySQL: its socket, an SSLSocket over TLS
    if sock is not None:
        version = getattr(sock, "version", None)
        return version() if callable(version) else None
    config = connection.alias_config
    params = {**(connection.settings_dict.get("OPTIONS") or {}), **(config.tls if config else {})}
    mode = params.get("ssl_mode")
    if mode in ("REQUIRED", "VERIFY_CA", "VERIFY_IDENTITY") or (params.get("ssl") and mode is None):
        return f"TLS required (ssl_mode {mode or 'from ssl'}; mysqlclient does not report the version)"
    return None


def summary(details: dict[str, Any]) -> str:
    tls = details.get("tls") or "no TLS (loopback)"
    return f"user {details.get('current_user')}, {tls}, {details.get('server')}"


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


def provision(plan: Any) -> None:
    """What Azure must have for it (``azure_setup``): .provision."""
    from .provision import provision as steps

    steps(plan, NAME, ENGINE, _AZURE_HOSTS)


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
    provision=provision,
)
