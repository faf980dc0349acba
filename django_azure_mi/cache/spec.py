"""The identity option of a cache (``CACHES[…]['OPTIONS']['MANAGED_IDENTITY']``): its spec, for
:func:`django_azure_mi.options.bind`. Light: Celery's spec reuses its keys without importing redis-py."""

from __future__ import annotations

from typing import Final

from ..options import OptionSpec, boolean, text

OPTION: Final = "MANAGED_IDENTITY"
WHERE: Final = "CACHES[…]['OPTIONS']"
SPEC: Final = OptionSpec(
    "redis",  # its service (services.py)
    OPTION,
    "E020",
    "{'USERNAME': '<object id of the identity>'}",
    upper=True,
    extra={"username": (text("the identity's object id (a string)"), None), "verify_tls": (boolean, True)},
)
