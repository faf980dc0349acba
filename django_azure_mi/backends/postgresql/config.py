"""The managed-identity settings of one ``DATABASES`` alias, validated once (base.py and client.py use it)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Final

from ... import runtime
from ...diagnostics import SettingError
from ...options import OptionSpec, bind, boolean, is_remote, refuse_near_miss, require_tls
from ..signin import AliasConfig

OPTION: Final = "managed_identity"
SPEC: Final = OptionSpec(
    "postgres",  # its service (services.py)
    OPTION,
    "E010",
    "{'client_id': '<client id of a user-assigned identity>', 'enabled': True}",
    extra={"enabled": (boolean, True), "verify_tls": (boolean, True)},
)
SSLMODES: Final = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
INSECURE_SSLMODES: Final = ("disable", "allow", "prefer")
UNVERIFIED_SSLMODES: Final = ("require", "verify-ca")
MIN_SYSTEM_ROOTS_LIBPQ: Final = 160000
MIN_POOL_VERSION: Final = (3, 3)


def alias_config(settings_dict: dict[str, Any], alias: str) -> AliasConfig | None:
    """Validate ``settings_dict`` for token sign-in; None when ``OPTIONS["managed_identity"]["enabled"]`` is
    False. Raises SettingError naming the setting and the fix. No network, no credential."""
    where = f"DATABASES[{alias!r}]"
    options = settings_dict.get("OPTIONS") or {}
    refuse_near_miss(options, OPTION, f"{where}['OPTIONS']", SPEC.check_id)
    binding = bind(SPEC, options.get(OPTION), f"{where}['OPTIONS']")
    if not binding.values["enabled"]:
        return None
    if settings_dict.get("PASSWORD"):
        raise SettingError(
            "E011",
            f"{where}['PASSWORD'] is set, but this database signs in with a managed identity token.",
            f"Remove PASSWORD (no secrets in settings), or set {where}['OPTIONS']['{OPTION}'] = "
            "{'enabled': False} to use the password instead (local development).",
        )
    user = settings_dict.get("USER")
    if not user:
        raise SettingError(
            "E012",
            f"{where}['USER'] is empty.",
            "With a managed identity, USER is the identity's Postgres role: the name it was created with by "
            "pgaadauth_create_principal (usually the managed identity's name; case-sensitive).",
        )
    if options.get("password"):
        raise SettingError(
            "E011",
            f"{where}['OPTIONS']['password'] is set, but this database signs in with a managed identity "
            "token.",
            f"Remove it, or set {where}['OPTIONS']['{OPTION}'] = {{'enabled': False}} to use a password.",
        )
    tls = tls_params(settings_dict, where, binding.values["verify_tls"])
    if options.get("pool"):
        check_pool_version(alias)
    host = settings_dict.get("HOST") or options.get("host") or ""
    port = str(settings_dict.get("PORT") or "")
    return AliasConfig(alias, str(user), str(host), port, binding, tls, connect_bounds(options))


def connect_bounds(options: dict[str, Any]) -> dict[str, str]:
    """Every wait bounded (docs/security.md): libpq waits for a server that stays silent (after the
    SSLRequest, during authentication) forever unless ``connect_timeout`` is set. Where neither
    ``OPTIONS["connect_timeout"]`` nor ``PGCONNECT_TIMEOUT`` sets it, it is AZURE_MANAGED_IDENTITY's
    ``TIMEOUT`` (whole seconds, at least libpq's minimum of 2)."""
    if options.get("connect_timeout") not in (None, "") or os.environ.get("PGCONNECT_TIMEOUT"):
        return {}
    return {"connect_timeout": str(max(2, round(runtime.get().config.timeout)))}


def targets(settings_dict: dict[str, Any], environ: Mapping[str, str]) -> list[str] | None:
    """Where libpq will connect, as it resolves the final parameters and the environment: the ``hostaddr``
    list, else the ``host`` list ("" = the default Unix socket). None when a service file decides (unknown
    here: counts as remote)."""
    options = settings_dict.get("OPTIONS") or {}
    if any(options.get(key) for key in ("service", "dsn", "conninfo")) or environ.get("PGSERVICE"):
        return None
    hostaddr = options.get("hostaddr") or environ.get("PGHOSTADDR")
    hosts = hostaddr or settings_dict.get("HOST") or options.get("host") or environ.get("PGHOST") or ""
    return [part.strip() for part in str(hosts).split(",")]


def tls_params(settings_dict: dict[str, Any], where: str, verify: bool) -> dict[str, str]:
    """The one TLS rule for Postgres, on the effective targets: to loopback anything goes; elsewhere the
    token goes only over verified TLS (``verify-full``; added with the OS trust store when no sslmode is
    set), or over unverified TLS (``require``/``verify-ca``) with the documented opt-out ``verify_tls=False``.
    Returns the parameters to add to the connection."""
    options = settings_dict.get("OPTIONS") or {}
    found = targets(settings_dict, os.environ)
    shown = ", ".join(t or "the local socket" for t in found) if found is not None else "a service's hosts"
    sslmode = options.get("sslmode") or os.environ.get("PGSSLMODE")
    key = f"{where}['OPTIONS']['sslmode']"
    if sslmode is not None and sslmode not in SSLMODES:
        raise SettingError(
            "E013", f"{key} = {sslmode!r} is not an sslmode;", f"use one of {', '.join(SSLMODES)}."
        )
    require_tls(
        "E013",
        found,
        sslmode not in INSECURE_SSLMODES,
        f"{key} = {sslmode!r} may send the access token unencrypted to {shown}.",
        "Remove it (this backend defaults to 'verify-full' off loopback) or use 'verify-full'.",
    )
    opt_out = f"{where}['OPTIONS']['{OPTION}']['verify_tls'] = False"
    require_tls(
        "E013",
        found,
        sslmode not in UNVERIFIED_SSLMODES or not verify,
        f"{key} = {sslmode!r} encrypts but does not verify the server: the access token could go to an "
        f"impostor at {shown}.",
        "Remove it (the default is 'verify-full' with the OS trust store, which holds Azure's roots), or "
        f"set {opt_out} to accept the risk (manage.py check warns).",
    )
    if sslmode or not is_remote(found):
        return {}
    added = {"sslmode": "verify-full"}
    if not options.get("sslrootcert") and not os.environ.get("PGSSLROOTCERT"):
        check_libpq_for_system_roots(where)
        added["sslrootcert"] = "system"
    return added


def check_libpq_for_system_roots(where: str) -> None:
    """``sslrootcert=system`` (the OS trust store) needs libpq >= 16."""
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    if is_psycopg3:
        import psycopg

        version = psycopg.pq.version()
    else:
        import psycopg2.extensions

        version = psycopg2.extensions.libpq_version()
    if version < MIN_SYSTEM_ROOTS_LIBPQ:
        raise SettingError(
            "E015",
            f"{where}: verifying the server with the OS trust store (sslrootcert='system') needs libpq >= "
            f"16; this driver uses libpq {version // 10000}.",
            "pip install 'psycopg[binary]>=3.2' (it bundles a newer libpq), or set "
            f"{where}['OPTIONS']['sslrootcert'] to a CA bundle file (e.g. certifi.where()).",
        )


def check_pool_version(alias: str) -> None:
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    if not is_psycopg3:
        return  # Django reports "Database pooling requires psycopg >= 3" itself
    try:
        from psycopg_pool import __version__ as version
    except ImportError:
        return  # Django reports the missing package itself
    found = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if found < MIN_POOL_VERSION:
        raise SettingError(
            "E014",
            f"DATABASES[{alias!r}]['OPTIONS']['pool'] with a managed identity needs psycopg-pool >= 3.3 "
            f"(found {version}) so that every new pooled connection gets a fresh token:",
            "pip install 'psycopg-pool>=3.3'.",
        )
