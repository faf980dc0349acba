"""``DATABASES`` from a URL (twelve-factor settings), with no token or password in it.

dj-database-url: register the ``azurepostgres://`` scheme once, then parse as usual::

    import dj_database_url
    from django_azure_mi.backends.postgresql.url import register_scheme

    register_scheme()  # azurepostgres:// -> this package's ENGINE
    DATABASES = {"default": dj_database_url.config(env="DATABASE_URL")}
    # DATABASE_URL=azurepostgres://my-app-identity@srv.postgres.database.azure.com:5432/app

The URL's user is the identity's Postgres role (percent-encode ``@``, ``/`` or spaces in it); the URL has
no password. The query parameters ``client_id`` and ``scope`` go to ``OPTIONS["managed_identity"]``, every
other one to libpq as usual (``sslmode``, ``options``...). django-environ and dj-database-url with a plain
``postgres://`` URL take the engine as an argument instead (``engine=ENGINE``, see docs/postgres.md).
"""

from __future__ import annotations

from typing import Any, Final

from ...diagnostics import SettingError

ENGINE: Final = "django_azure_mi.backends.postgresql"
SCHEME: Final = "azurepostgres"
IDENTITY_PARAMETERS: Final = ("client_id", "scope")


def register_scheme(scheme: str = SCHEME) -> None:
    """Teach dj-database-url the ``scheme`` (default ``azurepostgres``) through its ``register()`` API:
    URLs with it get this package's ENGINE, and :func:`postprocess` runs on their settings."""
    try:
        import dj_database_url
    except ImportError as exc:
        raise SettingError(
            "E016",
            "register_scheme() needs dj-database-url, which is not installed.",
            "pip install dj-database-url (or pass engine='django_azure_mi.backends.postgresql' to "
            "django-environ's env.db_url()).",
        ) from exc
    dj_database_url.register(scheme, ENGINE)(postprocess)


def postprocess(config: Any) -> None:  # dj-database-url's DBConfig (a TypedDict)
    """Refuse a password in the URL; move ``client_id`` / ``scope`` into ``OPTIONS["managed_identity"]``."""
    if config.get("PASSWORD"):
        raise SettingError(
            "E016",
            "The database URL has a password, but this database signs in with a managed identity token.",
            "Remove the password from the URL (azurepostgres://<role>@<host>:5432/<db>): no secret belongs "
            "in the environment.",
        )
    options = config.setdefault("OPTIONS", {})
    identity = {key: options.pop(key) for key in IDENTITY_PARAMETERS if key in options}
    if identity:
        options.setdefault("managed_identity", {}).update(identity)
