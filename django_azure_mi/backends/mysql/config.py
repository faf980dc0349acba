"""The managed-identity settings of one MySQL ``DATABASES`` alias, validated once (base.py uses it).

Azure Database for MySQL takes a Microsoft Entra token as the password of an Entra user, sent in clear
(``mysql_clear_password``) inside TLS: the token goes only over verified TLS off loopback, on the driver's
own terms (mysqlclient: ``ssl_mode`` and ``ssl``; PyMySQL: ``ssl``, ``ssl_verify_cert``,
``ssl_verify_identity``, ``ssl_disabled``), with the OS trust store (which holds Azure's roots) unless a CA
is given.
"""

from __future__ import annotations

import ssl
from typing import Any, Final

from ... import runtime
from ...diagnostics import SettingError
from ...options import (
    OptionSpec,
    bind,
    boolean,
    is_remote,
    refuse_near_miss,
    require_tls,
)
from ..signin import AliasConfig

OPTION: Final = "managed_identity"
SPEC: Final = OptionSpec(
    "mysql",  # its service (services.py)
    OPTION,
    "E070",
    "{'client_id': '<client id of a user-assigned identity>', 'enabled': True}",
    extra={"enabled": (boolean, True), "verify_tls": (boolean, True)},
)
SSL_MODES: Final = ("DISABLED", "PREFERRED", "REQUIRED", "VERIFY_CA", "VERIFY_IDENTITY")


def driver() -> str:
    """``"pymysql"`` when ``MySQLdb`` is PyMySQL (``pymysql.install_as_MySQLdb()``), else
    ``"mysqlclient"``."""
    import MySQLdb  # Django's MySQL backend imports it: mysqlclient, or PyMySQL standing in for it

    return "pymysql" if MySQLdb.__name__ == "pymysql" else "mysqlclient"


def alias_config(settings_dict: dict[str, Any], alias: str, client: str | None = None) -> AliasConfig | None:
    """Validate ``settings_dict`` for token sign-in; None when ``OPTIONS["managed_identity"]["enabled"]`` is
    False. ``client``: the driver (:func:`driver` by default). Raises SettingError naming the setting and
    the fix. No network, no credential."""
    where = f"DATABASES[{alias!r}]"
    options = settings_dict.get("OPTIONS") or {}
    refuse_near_miss(options, OPTION, f"{where}['OPTIONS']", SPEC.check_id)
    binding = bind(SPEC, options.get(OPTION), f"{where}['OPTIONS']")
    if not binding.values["enabled"]:
        return None
    given = [f"{where}['PASSWORD']"] if settings_dict.get("PASSWORD") else []
    given += [f"{where}['OPTIONS'][{key!r}]" for key in ("password", "passwd") if options.get(key)]
    if given:
        raise SettingError(
            "E071",
            f"{given[0]} is set, but this database signs in with a managed identity token.",
            f"Remove it (no secrets in settings), or set {where}['OPTIONS']['{OPTION}'] = "
            "{'enabled': False} to use the password instead (local development).",
        )
    user = settings_dict.get("USER")
    if not user:
        raise SettingError(
            "E072",
            f"{where}['USER'] is empty.",
            "With a managed identity, USER is the Microsoft Entra user the admin created for it (CREATE "
            "AADUSER '<name>' IDENTIFIED BY '<client id>'): usually the managed identity's name.",
        )
    host = str(settings_dict.get("HOST") or options.get("host") or "")
    port = str(settings_dict.get("PORT") or options.get("port") or "")
    tls = tls_arguments(
        options, where, effective_target(settings_dict), binding.values["verify_tls"], client or driver()
    )
    return AliasConfig(alias, str(user), host, port, binding, tls, connect_bounds(options))


def effective_target(settings_dict: dict[str, Any]) -> str:
    """Where the driver connects: ``OPTIONS['host']`` (which Django hands the driver over HOST) or HOST;
    ``"localhost"`` for a Unix socket (a HOST that is a path, or ``OPTIONS['unix_socket']`` with no other
    host), which never leaves the machine."""
    options = settings_dict.get("OPTIONS") or {}
    host = str(options.get("host") or settings_dict.get("HOST") or "")
    if host.startswith("/") or (options.get("unix_socket") and host in ("", "localhost")):
        return "localhost"
    return host or "localhost"


def connect_bounds(options: dict[str, Any]) -> dict[str, Any]:
    """Every wait bounded: without ``connect_timeout`` a silent server keeps the connect waiting; where
    OPTIONS has none, AZURE_MANAGED_IDENTITY's ``TIMEOUT`` (whole seconds, at least 2)."""
    if options.get("connect_timeout") not in (None, ""):
        return {}
    return {"connect_timeout": max(2, round(runtime.get().config.timeout))}


def tls_arguments(
    options: dict[str, Any], where: str, target: str, verify: bool, client: str
) -> dict[str, Any]:
    """The one TLS rule for MySQL on the effective target (:func:`effective_target`): to loopback anything
    goes; elsewhere verified TLS (the server's certificate and name), or unverified with the documented
    opt-out ``verify_tls=False``. Returns the driver's arguments to add."""
    key = f"{where}['OPTIONS']"
    opt_out = f"{key}['{OPTION}']['verify_tls'] = False"
    remote = is_remote(target)
    given = options.get("ssl") if isinstance(options.get("ssl"), dict) else {}
    if client == "mysqlclient":
        mode = options.get("ssl_mode")
        if mode is not None and str(mode).upper() not in SSL_MODES:
            raise SettingError(
                "E073",
                f"{key}['ssl_mode'] = {mode!r} is not an ssl_mode;",
                f"use one of {', '.join(SSL_MODES)}.",
            )
        mode = str(mode).upper() if mode is not None else None
        require_tls(
            "E073", target, mode not in ("DISABLED", "PREFERRED"),
            f"{key}['ssl_mode'] = {mode!r} may send the access token unencrypted to {target}.",
            "Remove it (this backend defaults to 'VERIFY_IDENTITY' off loopback) or use 'VERIFY_IDENTITY'.",
        )  # fmt: skip
        require_tls(
            "E073", target, mode not in ("REQUIRED", "VERIFY_CA") or not verify,
            f"{key}['ssl_mode'] = {mode!r} encrypts but does not verify the server's name: the access token "
            f"could go to an impostor at {target}.",
            f"Remove it (the default is 'VERIFY_IDENTITY' with the OS trust store), or set {opt_out}.",
        )  # fmt: skip
        if mode is not None or not remote:
            return {}
        ca = given.get("ca") if given else None
        return {"ssl_mode": "VERIFY_IDENTITY", "ssl": {**(given or {}), "ca": ca or system_ca_file(where)}}
    # PyMySQL
    unverified = options.get("ssl_verify_cert") is False or options.get("ssl_verify_identity") is False
    unverified = unverified or (given or {}).get("check_hostname") is False
    require_tls(
        "E073", target, not options.get("ssl_disabled"),
        f"{key}['ssl_disabled'] sends the access token unencrypted to {target}.",
        "Remove it: Azure requires TLS, and the token must not travel in clear.",
    )  # fmt: skip
    require_tls(
        "E073", target, not unverified or not verify,
        f"{key} turns off the check of the server's certificate or name: the access token could go to an "
        f"impostor at {target}.",
        f"Remove ssl_verify_cert/ssl_verify_identity/check_hostname, or set {opt_out}.",
    )  # fmt: skip
    if not remote or unverified:
        return {}
    if given:
        return {"ssl_verify_cert": True, "ssl_verify_identity": True}
    return {"ssl": ssl.create_default_context()}  # the OS trust store, the server's name checked


def system_ca_file(where: str) -> str:
    """The OS trust store as one CA file (mysqlclient takes a file), else E074."""
    import os

    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile, "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and os.path.exists(candidate):
            return candidate
    raise SettingError(
        "E074",
        f"{where}: no CA bundle file was found to verify the server with (mysqlclient needs a file).",
        f"Set {where}['OPTIONS']['ssl'] = {{'ca': '<CA bundle file>'}} (e.g. certifi.where()).",
    )
