"""What a MySQL error means and what to do about it (the ENGINE's connect errors and the probe's). MySQL's
error numbers decide (1045: access denied; 3159: no TLS; 2059: the client would not send the token in
clear), and the token's own claims tell an expired or foreign token apart, since the server doesn't say."""

from __future__ import annotations

from typing import Any, Final

from ...diagnostics import ServiceFailure, generic, text_of
from ..signin import refusal, token_facts

AUTH_KINDS: Final = frozenset({"auth-refused", "token-expired", "wrong-audience"})
ACCESS_DENIED: Final = 1045
INSECURE_TRANSPORT: Final = 3159
PLUGIN_CANNOT_LOAD: Final = 2059


def error_code(exc: BaseException) -> int | None:
    """MySQL's error number of a driver error (its first argument), if it has one."""
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def diagnose(exc: BaseException, config: Any, token: Any = None) -> ServiceFailure:
    """A MySQL connect error. ``config``: the alias's AliasConfig; ``token``: the core Token used."""
    code, text = error_code(exc), text_of(exc)
    lowered = text.lower()
    where = f"DATABASES[{config.alias!r}]"
    facts = token_facts(token)
    if code == ACCESS_DENIED:
        aud = str(facts["aud"] or "")
        if aud and "ossrdbms" not in aud:
            return ServiceFailure(
                "wrong-audience",
                f"MySQL refused the token: it is for another resource (aud {aud}), not for Azure Database "
                "for MySQL.",
                f"Remove {where}['OPTIONS']['managed_identity']['scope'] (the default is the server's "
                "cloud's https://ossrdbms-aad.database.windows.net/.default) or set it to that scope.",
                facts,
            )
        if facts["expires_in"] is not None and facts["expires_in"] <= 0:
            return ServiceFailure(
                "token-expired",
                "The token expired before MySQL checked it.",
                "Check the machine's clock.",
                facts,
            )
        named = f" (the identity's name is {facts['name']!r})" if facts["name"] else ""
        return ServiceFailure(
            "auth-refused",
            f"MySQL refused the token for user {config.user!r}{named}.",
            f"{where}['USER'] must be the Microsoft Entra user the server's Entra admin created for this "
            "identity (CREATE AADUSER '<name>' IDENTIFIED BY '<client id>'; case-sensitive); check too that "
            "the server accepts Microsoft Entra authentication, and that the scope matches its cloud "
            f"(AZURE_MANAGED_IDENTITY['CLOUD'] or {where}['OPTIONS']['managed_identity']['scope']). "
            "manage.py azure_setup prints the steps.",
            facts,
        )
    if code == PLUGIN_CANNOT_LOAD or "mysql_clear_password" in lowered:
        return ServiceFailure(
            "cleartext-plugin",
            "The MySQL client library would not send the token in clear (mysql_clear_password), which Azure "
            "asks for.",
            "Use PyMySQL (pymysql.install_as_MySQLdb()) or mysqlclient built against MariaDB Connector/C; "
            "Oracle's libmysqlclient sends it only with LIBMYSQL_ENABLE_CLEARTEXT_PLUGIN=1 in the "
            "environment.",
            facts,
        )
    if code == INSECURE_TRANSPORT or any(word in lowered for word in ("ssl", "tls", "certificate")):
        return tls_failure(config.alias)
    return generic("MySQL", where, exc)


def tls_failure(alias: str) -> ServiceFailure:
    return ServiceFailure(
        "tls",
        "TLS problem between Django and MySQL.",
        f"Azure requires TLS, verified against Azure's roots: leave DATABASES[{alias!r}]['OPTIONS']'s "
        "ssl_mode (mysqlclient) or ssl (PyMySQL) out (verified TLS with the OS trust store is the default), "
        "or give the CA in ['ssl']['ca'].",
    )


def refusal_message(failure: ServiceFailure, config: Any, exc: BaseException) -> tuple[str, ServiceFailure]:
    """The message of the OperationalError raised for a refused sign-in, and the failure to attach."""
    return refusal(failure, config, exc, "MySQL", 3306, "user")
