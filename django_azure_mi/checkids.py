"""Every check id the package raises, in one registry: ``manage.py check`` reports them as
``django_azure_mi.<id>``, :class:`~django_azure_mi.diagnostics.SettingError` carries them (``.check_id``),
and the README's table is generated from here (``python -m django_azure_mi.checkids``).
``tests/test_structure.py`` fails when an id is raised but not listed here, or listed but never raised.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True)
class CheckId:
    id: str  # "E013": an error; "W011": a warning
    service: str  # what it is about: "settings", "postgres", "redis", "celery", "storage", "keyvault"
    summary: str  # what is wrong (Markdown)


CHECK_IDS: Final[tuple[CheckId, ...]] = (
    CheckId(
        "E000", "settings", "Django's own `ImproperlyConfigured` from an adapter's validation (its message)"
    ),
    CheckId(
        "E001", "settings", "`AZURE_MANAGED_IDENTITY`: unknown key or bad value, or `None` (leave it out)"
    ),
    CheckId("E002", "settings", "a client id that is not a GUID"),
    CheckId("E003", "settings", "`CREDENTIAL` path cannot be imported / is not callable"),
    CheckId("E004", "settings", "`workload_identity` without the AKS workload-identity environment"),
    CheckId("E005", "settings", "a `scope` option that is not a scope"),
    CheckId("W005", "settings", "a `scope` that is another service's: its tokens will be refused"),
    CheckId("E006", "settings", "the extra a configured adapter needs is not installed"),
    CheckId(
        "E007",
        "settings",
        "`TOKEN_CACHE_DIR` is not a directory, is open to other users, or sits under a parent others can "
        "write without the sticky bit",
    ),
    CheckId("W007", "settings", "`TOKEN_CACHE_DIR` cannot be written (read-only): tokens stay in memory"),
    CheckId("E010", "postgres", "`DATABASES[…]['OPTIONS']['managed_identity']` malformed"),
    CheckId("E011", "postgres", "`PASSWORD` (or `OPTIONS['password']`) set with a managed identity"),
    CheckId("E012", "postgres", "`USER` empty"),
    CheckId(
        "E013",
        "postgres",
        "an `sslmode` that is clear or unverified toward a non-loopback target (judged on the effective "
        "targets), or a libpq parameter dbshell cannot hand to psql",
    ),
    CheckId("E014", "postgres", "`OPTIONS['pool']` with psycopg-pool < 3.3"),
    CheckId(
        "E015", "postgres", "`sslrootcert='system'` (the default) with libpq < 16 (the driver's or psql's)"
    ),
    CheckId(
        "E016", "postgres", "a password in a database URL, or `register_scheme()` without dj-database-url"
    ),
    CheckId(
        "W010", "postgres", "a `*.postgres.database.azure.com` host without password, not using our ENGINE"
    ),
    CheckId("W011", "postgres", "`managed_identity['verify_tls'] = False`: the server is not verified"),
    CheckId("E020", "redis", "`CACHES[…]['OPTIONS']['MANAGED_IDENTITY']` malformed"),
    CheckId("E021", "redis", "credentials in `LOCATION` or `OPTIONS` (PASSWORD/USERNAME, password/username)"),
    CheckId(
        "E022",
        "redis",
        "no TLS, or TLS that does not verify the server (a TLS option value that is not a verifying one), "
        "to a non-loopback host",
    ),
    CheckId("E023", "redis", "a pool class that cannot re-AUTH"),
    CheckId("E024", "redis", "`MANAGED_IDENTITY` on django-redis without `CONNECTION_FACTORY` (ignored)"),
    CheckId("E025", "redis", "`EntraConnectionFactory` without django-redis installed"),
    CheckId("W020", "redis", "`MANAGED_IDENTITY['USERNAME']` is not an object id (GUID)"),
    CheckId(
        "W021", "redis", "an Azure Redis `LOCATION` without password that does not use our factory/backend"
    ),
    CheckId("W022", "redis", "`MANAGED_IDENTITY['VERIFY_TLS'] = False`: the server is not verified"),
    CheckId("E030", "storage", "account key / SAS token / connection string / token_credential set"),
    CheckId("E031", "storage", "`STORAGES[…]['OPTIONS']['managed_identity']` malformed"),
    CheckId(
        "E032",
        "storage",
        'http, or a `connection_verify` that does not verify (`False`, `0`, `""`, `None`), to a '
        "non-loopback endpoint",
    ),
    CheckId("W032", "storage", "`managed_identity['verify_tls'] = False`: the endpoint is not verified"),
    CheckId("E033", "storage", "no storage account (`account_name` / `account_url`), or not an account name"),
    CheckId(
        "E034", "storage", "`expiration_secs` negative, not a number, or longer than a delegation key lives"
    ),
    CheckId("E035", "storage", "`custom_domain` is not a host name (a scheme or a path)"),
    CheckId("E036", "storage", "no `azure_container`"),
    CheckId("E040", "keyvault", "`AZURE_KEY_VAULT_URL` is not an https URL"),
    CheckId(
        "E050",
        "celery",
        "Celery's `managed_identity` transport option malformed, or a user/password set for the broker or "
        "result backend",
    ),
    CheckId("E051", "celery", "`CELERY_BROKER_URL` is not a Redis URL"),
)

BY_ID: Final = {check.id: check for check in CHECK_IDS}


def markdown_table() -> str:
    """The README's table of check ids."""
    rows = ["| id | service | problem |", "|---|---|---|"]
    rows += [f"| `{c.id}` | {c.service} | {c.summary} |" for c in CHECK_IDS]
    return "\n".join(rows)


if __name__ == "__main__":  # python -m django_azure_mi.checkids > table.md
    sys.stdout.write(markdown_table() + "\n")
