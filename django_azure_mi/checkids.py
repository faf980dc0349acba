"""Every check id the package raises, in one registry: the shared ones here (about
``AZURE_MANAGED_IDENTITY`` and what every service shares), each service's in its descriptor
(``service.py``, :mod:`django_azure_mi.services`). ``manage.py check`` reports them as
``django_azure_mi.<id>``, :class:`~django_azure_mi.diagnostics.SettingError` carries them (``.check_id``),
and the docs' tables (``docs/checks.md``, ``docs/configuration.md``) are generated from here
(``python -m django_azure_mi.checkids``).
``tests/test_structure.py`` fails when an id is raised but not listed, or listed but never raised.
"""

from __future__ import annotations

import sys
from typing import Final

from . import services
from .services import CheckId

SETTINGS: Final = "settings"  # the owner of the shared ids, in the table
SHARED: Final[tuple[CheckId, ...]] = (
    CheckId("E000", "Django's own `ImproperlyConfigured` from an adapter's validation (its message)"),
    CheckId("E001", "`AZURE_MANAGED_IDENTITY`: unknown key or bad value, or `None` (leave it out)"),
    CheckId("E002", "a client id that is not a GUID"),
    CheckId("E003", "`CREDENTIAL` path cannot be imported / is not callable"),
    CheckId("E004", "`workload_identity` without the AKS workload-identity environment"),
    CheckId("E005", "a `scope` option that is not a scope"),
    CheckId("W005", "a `scope` that is another service's: its tokens will be refused"),
    CheckId("E006", "the extra a configured adapter needs is not installed"),
    CheckId(
        "E007",
        "`TOKEN_CACHE_DIR` is not a directory, is open to other users, or sits under a parent others "
        "can write without the sticky bit",
    ),
    CheckId("W007", "`TOKEN_CACHE_DIR` cannot be written (read-only): tokens stay in memory"),
)


def check_ids() -> list[tuple[str, CheckId]]:
    """(owner, id) of every check id: the shared ones, then each registered service's."""
    return [(SETTINGS, c) for c in SHARED] + [
        (service.name, c) for service in services.registered() for c in service.check_ids
    ]


def by_id() -> dict[str, CheckId]:
    return {check.id: check for _, check in check_ids()}


def markdown_table() -> str:
    """The table of check ids (``docs/checks.md``)."""
    rows = ["| id | service | problem |", "|---|---|---|"]
    rows += [f"| `{c.id}` | {owner} | {c.summary} |" for owner, c in check_ids()]
    return "\n".join(rows)


def scopes_table() -> str:
    """Each service's default scope in each cloud (``docs/configuration.md``); a service that uses another's
    scopes (Celery, Channels: the cache's) is not repeated."""
    from .conf import CLOUDS

    rows = ["| service | " + " | ".join(CLOUDS) + " |", "|---" * (len(CLOUDS) + 1) + "|"]
    rows += [
        f"| {service.title} | " + " | ".join(f"`{service.scope(cloud)}`" for cloud in CLOUDS) + " |"
        for service in services.registered()
        if service.scopes
    ]
    return "\n".join(rows)


if __name__ == "__main__":  # python -m django_azure_mi.checkids: the tables the docs hold
    sys.stdout.write(markdown_table() + "\n\n" + scopes_table() + "\n")
