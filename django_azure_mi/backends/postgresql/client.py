"""``manage.py dbshell``: psql gets a fresh token through ``PGPASSWORD`` in its environment, never on argv.

psql must connect exactly where the TLS rule judged the connection would go, with the sslmode it judged:
Django's client passes only HOST, PORT, NAME, USER and a few ``OPTIONS``, so every other libpq parameter
in ``OPTIONS`` that picks the target or the TLS settings (``hostaddr``, ``host``, ``connect_timeout``, ...)
goes to psql through its ``PG*`` environment variable, and one that has none is refused.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
from collections.abc import Iterable
from typing import Any, Final

from django.db.backends.postgresql import client as postgresql

from ...diagnostics import SettingError
from .config import OPTION, alias_config

# libpq parameters Django's client leaves out, and the environment variable psql's libpq reads for each.
LIBPQ_ENV: Final = {
    "hostaddr": "PGHOSTADDR",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "sslcrl": "PGSSLCRL",
    "sslcrldir": "PGSSLCRLDIR",
    "sslsni": "PGSSLSNI",
    "sslcompression": "PGSSLCOMPRESSION",
    "ssl_min_protocol_version": "PGSSLMINPROTOCOLVERSION",
    "ssl_max_protocol_version": "PGSSLMAXPROTOCOLVERSION",
    "sslnegotiation": "PGSSLNEGOTIATION",
    "gssencmode": "PGGSSENCMODE",
    "channel_binding": "PGCHANNELBINDING",
    "require_auth": "PGREQUIREAUTH",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
    "load_balance_hosts": "PGLOADBALANCEHOSTS",
    "krbsrvname": "PGKRBSRVNAME",
    "gsslib": "PGGSSLIB",
    "application_name": "PGAPPNAME",
    "options": "PGOPTIONS",
    "client_encoding": "PGCLIENTENCODING",
}
# libpq parameters psql cannot be given here (no environment variable): refused rather than dropped.
NO_ENV: Final = ("dsn", "conninfo", "sslpassword", "requirepeer", "sslcertmode")


class DatabaseClient(postgresql.DatabaseClient):
    def runshell(self, parameters: Iterable[str]) -> None:
        # Misconfiguration is reported by the connection wrapper, which names the alias.
        self.connection.alias_config  # type: ignore[attr-defined]  # noqa: B018
        super().runshell(parameters)

    @classmethod
    def settings_to_cmd_args_env(
        cls, settings_dict: dict[str, Any], parameters: Iterable[str]
    ) -> tuple[list[str], dict[str, str] | None]:
        options = {k: v for k, v in (settings_dict.get("OPTIONS") or {}).items() if k != OPTION}
        args, env = super().settings_to_cmd_args_env({**settings_dict, "OPTIONS": options}, parameters)
        config = alias_config(settings_dict, "…")
        if config is None:
            return args, env
        where = f"DATABASES[{config.alias!r}]['OPTIONS']"
        env = dict(env or {})
        for key in NO_ENV:
            if options.get(key):
                raise SettingError(
                    "E013",
                    f"{where}[{key!r}] cannot be handed to psql: dbshell would connect elsewhere, or "
                    "otherwise, than the application does.",
                    "Connect with psql yourself, or move the parameter into HOST/PORT/OPTIONS keys.",
                )
        if options.get("host") and not settings_dict.get("HOST"):
            env["PGHOST"] = str(options["host"])  # the backend connects there (Django's client drops it)
        for key, variable in LIBPQ_ENV.items():
            if options.get(key) not in (None, ""):
                env[variable] = str(options[key])
        added = {**config.tls, **config.bounds}
        env.update({f"PG{name.upper()}": value for name, value in added.items()})  # PGSSLMODE, ...
        if config.tls.get("sslrootcert") == "system":
            check_psql_for_system_roots(args[0], where)
        env["PGPASSWORD"] = config.token()  # last: nothing above may fail with the token in hand
        return args, env


def check_psql_for_system_roots(executable: str, where: str) -> None:
    """``sslrootcert=system`` needs libpq >= 16 in psql (an older one looks for a file named "system").
    Asked of psql itself: libpq >= 16 refuses ``sslmode=require`` with ``sslrootcert=system`` while parsing
    the parameters, before any connection; an older one tries a socket in a directory that does not exist."""
    path = shutil.which(executable)
    if path is None:
        return  # Django reports the missing psql itself
    probe = "sslrootcert=system sslmode=require host=/nonexistent-django-azure-mi-probe dbname=probe"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    try:
        found = subprocess.run(
            [path, "-X", "-w", "-d", probe, "-c", ""], env=environ, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return  # psql will say what is wrong when it runs
    if "sslrootcert=system" in found.stderr:
        return
    bundle = ssl.get_default_verify_paths().openssl_cafile
    raise SettingError(
        "E015",
        f"{where}: dbshell verifies the server with the OS trust store (sslrootcert='system'), which needs "
        f"libpq >= 16; {path} uses an older libpq (it looks for a file named 'system').",
        f"Install psql from PostgreSQL 16 or newer (e.g. postgresql-client-16), or set "
        f"{where}['sslrootcert'] to the OS's CA bundle file ({bundle} here), which the application's "
        "driver accepts too.",
    )
