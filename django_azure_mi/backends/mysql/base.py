"""Django's MySQL backend, signing in to Azure Database for MySQL with a Microsoft Entra ID token.

Every new physical connection takes the current token (from the process-wide token core) as its password:
plain connections (``CONN_MAX_AGE = 0``), persistent ones, and every reconnect after ``CONN_HEALTH_CHECKS``
found one dead. Azure asks for the token in clear (``mysql_clear_password``) inside TLS: the driver sends it
so when asked (PyMySQL always; mysqlclient when built against MariaDB Connector/C, as Debian's and most
wheels are; Oracle's libmysqlclient needs LIBMYSQL_ENABLE_CLEARTEXT_PLUGIN, which we don't set for the
process: the diagnosis says so), and TLS is verified off loopback (:mod:`.config`). The token is never
written into ``settings_dict``; the connection parameters hold it only for the one call that connects
(:mod:`..signin`). MySQL checks the token only at sign-in, so live sessions outlive it.

mysqlclient is Django's driver; for PyMySQL, call ``pymysql.install_as_MySQLdb()`` before Django loads
the backend (settings.py), as Django's documentation says.
"""

from __future__ import annotations

import logging
from functools import cached_property
from typing import Any

from django.db.backends.mysql import base as mysql

from ..signin import AliasConfig, TokenSignIn
from .client import DatabaseClient
from .config import OPTION, alias_config
from .creation import DatabaseCreation
from .diagnosis import AUTH_KINDS, diagnose, refusal_message

logger = logging.getLogger("django_azure_mi.mysql")


class DatabaseWrapper(TokenSignIn, mysql.DatabaseWrapper):
    client_class = DatabaseClient
    creation_class = DatabaseCreation
    sign_in_logger = logger
    auth_kinds = AUTH_KINDS
    diagnose = staticmethod(diagnose)
    refusal_message = staticmethod(refusal_message)

    @cached_property
    def alias_config(self) -> AliasConfig | None:
        """This alias's validated managed-identity settings (None: a password alias); validated once."""
        return alias_config(self.settings_dict, self.alias)

    def get_connection_params(self) -> dict[str, Any]:
        params: dict[str, Any] = super().get_connection_params()
        params.pop(OPTION, None)  # Django hands OPTIONS to the driver: ours is not the driver's
        config = self.alias_config
        if config is None:
            return params
        params.update(config.tls)  # verified TLS off loopback, unless set
        params.update(config.bounds)  # connect_timeout, unless set
        return self.token_params(params, config)
