"""``manage.py dbshell``: the ``mysql`` client gets a fresh token through ``MYSQL_PWD`` in its environment
(as Django's own client hands it a password), never on argv, and verifies the server as the application
does off loopback: the CA file the TLS rule chose and the server's name, in the flags of the client found
(Oracle's ``mysql``: ``--ssl-mode=VERIFY_IDENTITY`` and ``--enable-cleartext-plugin``, which it needs to
send the token in clear; MariaDB's: ``--ssl-verify-server-cert``, and it sends the token in clear when
asked)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from typing import Any

from django.db.backends.mysql import client as mysql

from ...options import is_remote
from .config import OPTION, alias_config, effective_target, system_ca_file


class DatabaseClient(mysql.DatabaseClient):
    def runshell(self, parameters: Iterable[str]) -> None:
        self.connection.alias_config  # type: ignore[attr-defined]  # noqa: B018  # names the alias if wrong
        super().runshell(parameters)

    @classmethod
    def settings_to_cmd_args_env(
        cls, settings_dict: dict[str, Any], parameters: Iterable[str]
    ) -> tuple[list[str], dict[str, str] | None]:
        options = {k: v for k, v in (settings_dict.get("OPTIONS") or {}).items() if k != OPTION}
        plain = {**settings_dict, "OPTIONS": options}
        args, env = super().settings_to_cmd_args_env(plain, parameters)
        config = alias_config(
            settings_dict, "…", client="mysqlclient"
        )  # a CA file, as the mysql client takes
        if config is None:
            return args, env
        mariadb = is_mariadb(args[0])
        extra: list[str] = []
        if is_remote(effective_target(settings_dict)):
            if not (options.get("ssl") or {}).get("ca"):  # Django's client passes a given one
                extra.append(f"--ssl-ca={system_ca_file(f'DATABASES[{config.alias!r}]')}")
            extra.append("--ssl-verify-server-cert" if mariadb else "--ssl-mode=VERIFY_IDENTITY")
        if not mariadb:
            extra.append("--enable-cleartext-plugin")  # Oracle's client sends the token in clear only so
        args = [args[0], *extra, *args[1:]]
        return args, {**(env or {}), "MYSQL_PWD": config.token()}  # last: nothing above may fail with it


def is_mariadb(executable: str) -> bool:
    """Is ``executable`` MariaDB's client (Debian's ``mysql`` is), not Oracle's?"""
    path = shutil.which(executable)
    if path is None:
        return False  # Django reports the missing client itself
    if os.path.basename(os.path.realpath(path)).startswith("mariadb"):
        return True  # MariaDB installs its client as mariadb, and mysql as a link to it: nothing to run
    try:
        found = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "mariadb" in (found.stdout + found.stderr).lower()
