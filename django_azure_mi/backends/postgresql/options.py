"""The managed-identity settings of one ``DATABASES`` alias, validated once (base.py and client.py use it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from ...diagnostics import SettingError
from ...options import Bound, OptionSpec, ServiceBinding, bind, boolean, is_loopback, require_tls

if TYPE_CHECKING:
    pass

OPTION: Final = "managed_identity"
SPEC: Final = OptionSpec(
    "postgres",
    OPTION,
    "E010",
    "{'client_id': '<client id of a user-assigned identity>', 'enabled': True}",
    extra={"enabled": (boolean, True)},
)
INSECURE_SSLMODES: Final = ("disable", "allow", "prefer")
MIN_POOL_VERSION: Final = (3, 3)


@dataclass(frozen=True)
class ManagedIdentity(Bound):
    """The validated managed-identity settings of one alias."""

    alias: str
    user: str
    host: str
    port: str
    binding: ServiceBinding

    @property
    def where(self) -> str:
        return f"DATABASES[{self.alias!r}]"

    def token(self) -> str:
        return self.provider.get_token(self.scope).token


def managed_identity(settings_dict: dict[str, Any], alias: str) -> ManagedIdentity | None:
    """Validate ``settings_dict`` for token sign-in; None when ``OPTIONS["managed_identity"]["enabled"]`` is
    False. Raises SettingError naming the setting and the fix. No network, no credential."""
    where = f"DATABASES[{alias!r}]"
    options = settings_dict.get("OPTIONS") or {}
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
    host = settings_dict.get("HOST") or ""
    sslmode = options.get("sslmode")
    require_tls(
        "E013",
        host,
        sslmode not in INSECURE_SSLMODES,
        f"{where}['OPTIONS']['sslmode'] = {sslmode!r} may send the access token unencrypted to {host}.",
        "Remove it (this backend defaults to 'require' off loopback) or use 'verify-full' with "
        "'sslrootcert'.",
    )
    if options.get("pool"):
        check_pool_version(alias)
    return ManagedIdentity(alias, str(user), host, str(settings_dict.get("PORT") or ""), binding)


def default_sslmode(identity: ManagedIdentity, options: dict[str, Any]) -> str | None:
    """The sslmode to add when the settings name none: TLS off loopback."""
    return "require" if "sslmode" not in options and not is_loopback(identity.host) else None


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
