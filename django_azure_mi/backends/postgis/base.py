"""GeoDjango's PostGIS backend, signing in with a Microsoft Entra ID token instead of a password.

Our Postgres ``DatabaseWrapper`` comes first in the method resolution order, GeoDjango's PostGIS one next,
Django's PostgreSQL one last: every new connection takes a token as ``django_azure_mi.backends.postgresql``
describes (plain, persistent, Django's pool; the same ``OPTIONS["managed_identity"]``, checks, probe, dbshell
and diagnosis), and GeoDjango's wrapper registers its geometry adapters on it and keeps its spatial
operations, features, introspection and schema editor. Nothing is copied from either.

Azure Database for PostgreSQL allow-lists PostGIS (the ``azure.extensions`` server parameter), and the
extension is created in each database by an admin: GeoDjango's ``prepare_database`` finds it there, or
tries ``CREATE EXTENSION postgis``, which the app's role may not be allowed to run (docs/postgres.md).
"""

from __future__ import annotations

from django.contrib.gis.db.backends.postgis import base as postgis

from ..postgresql import base as ours


class DatabaseWrapper(ours.DatabaseWrapper, postgis.DatabaseWrapper):
    """GeoDjango's PostGIS ``DatabaseWrapper`` with our token sign-in (see the module docstring)."""
