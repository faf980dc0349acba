"""Django settings for the local stand-ins, built from the variables ``python -m django_azure_mi.testing``
exports, CA files included: a project's ``settings.py`` switches between Azure and the stand-ins with one
environment variable (the CLI exports ``DJANGO_AZURE_MI_STAND_INS=1``)::

    # settings.py: your Azure settings (DATABASES, CACHES, STORAGES, CELERY_*, CHANNEL_LAYERS), then
    if os.environ.get("DJANGO_AZURE_MI_STAND_INS"):
        from django_azure_mi.testing.settings import stand_in_settings

        globals().update(stand_in_settings())

Each service whose variables are set gets its settings; a service the CLI didn't start (``--services``,
``--no-storage``) is left as your settings have it. Key Vault needs nothing here: ``keyvault.secret()``
reads ``AZURE_KEY_VAULT_URL`` and the SDK ``REQUESTS_CA_BUNDLE``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Final

MARKER: Final = "DJANGO_AZURE_MI_STAND_INS"


def stand_in_settings(
    environ: Mapping[str, str] | None = None, *, cache: str = "django-redis"
) -> dict[str, Any]:
    """``DATABASES``, ``CACHES``, ``STORAGES``, ``CELERY_*`` and ``CHANNEL_LAYERS`` for the stand-ins whose
    variables ``environ`` (default: ``os.environ``) holds; ``cache``: "django-redis" or "builtin" (our
    subclass of Django's RedisCache). What isn't there is left out. Raises ``KeyError`` naming a variable
    that is missing while its service's others are set."""
    from .postgres import database_entry
    from .redis import cache_entry, celery_entries, channel_layer_entry

    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    if "AZURE_POSTGRES_HOST" in env:
        out["DATABASES"] = {
            "default": database_entry(
                env["AZURE_POSTGRES_HOST"],
                int(env["AZURE_POSTGRES_PORT"]),
                env["AZURE_POSTGRES_NAME"],
                env["AZURE_POSTGRES_USER"],
                env["AZURE_POSTGRES_SSLROOTCERT"],
            )
        }
    if "AZURE_MYSQL_HOST" in env:  # beside Postgres as "mysql", else "default"
        from . import mysql

        try:
            import MySQLdb  # noqa: F401
        except ImportError:  # what a PyMySQL site's settings.py does
            import pymysql

            pymysql.install_as_MySQLdb()
        entry = mysql.database_entry(
            env["AZURE_MYSQL_HOST"],
            int(env["AZURE_MYSQL_PORT"]),
            env["AZURE_MYSQL_NAME"],
            env["AZURE_MYSQL_USER"],
            env["AZURE_MYSQL_SSL_CA"],
        )
        alias = "mysql" if "DATABASES" in out else "default"
        out.setdefault("DATABASES", {})[alias] = entry
    if "AZURE_REDIS_URL" in env:
        url, ca, policy = env["AZURE_REDIS_URL"], env["AZURE_REDIS_CA_CERTS"], env["AZURE_REDIS_POLICY"]
        identity = {"USERNAME": env["AZURE_REDIS_USERNAME"]} if env.get("AZURE_REDIS_USERNAME") else {}
        out["CACHES"] = {"default": cache_entry(url, ca, policy, cache, identity)}
        celery = celery_entries(url, ca, policy, {k.lower(): v for k, v in identity.items()})
        out.update({f"CELERY_{name.upper()}": value for name, value in celery.items()})
        out["CHANNEL_LAYERS"] = {"default": channel_layer_entry(url, ca, policy)}
    if "AZURE_STORAGE_ACCOUNT_URL" in env:
        from .azurite import storage_entry

        out["STORAGES"] = {
            "default": storage_entry(
                env["AZURE_STORAGE_ACCOUNT_URL"],
                env["AZURE_STORAGE_CONTAINER"],
                env["AZURE_STORAGE_CA_BUNDLE"],
            ),
            "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
        }
    return out
