"""GeoDjango's PostGIS backend on the managed identity (ENGINE ``django_azure_mi.backends.postgis``) against
the token-checking Postgres stand-in with the PostGIS extension (Debian's ``postgresql-15-postgis-3``, which
``make test`` installs where it can; skipped with the reason elsewhere). Django's own ``gis_tests`` run on
it too (tests/django_suites)."""

from __future__ import annotations

import json

import pytest
from django.core.management import call_command

POSTGIS = "django_azure_mi.backends.postgis"
ROLE = "geo-identity"


def _gis_libraries() -> None:
    try:
        from django.contrib.gis.gdal import gdal_version
        from django.contrib.gis.geos import geos_version

        gdal_version(), geos_version()
    except Exception as exc:  # ImproperlyConfigured or OSError: the library is not installed
        pytest.skip(f"GeoDjango's libraries are missing here (GDAL, GEOS): {exc}")


@pytest.fixture(scope="module")
def postgis_server():
    """A token-checking Postgres whose databases have PostGIS, created as Azure's allow-list lets an admin
    create it (the app's role may not run CREATE EXTENSION postgis)."""
    from django_azure_mi.testing.pgaadauth import ExtensionMissing
    from django_azure_mi.testing.postgres import PostgresStandIn

    _gis_libraries()
    with PostgresStandIn(dbname="geo") as server:
        try:
            server.create_extensions("postgis")
        except ExtensionMissing as exc:
            pytest.skip(str(exc))
        yield server


@pytest.fixture
def geo(postgis_server, azure_imds, azure_databases):
    """``connections`` with ``default`` on the PostGIS engine as the test's system-assigned identity."""
    detach = postgis_server.attach(azure_imds)
    postgis_server.add_role(ROLE)
    try:
        yield azure_databases(default=postgis_server.database_settings(ROLE, ENGINE=POSTGIS))
    finally:
        detach()


@pytest.mark.integration
@pytest.mark.parametrize("pool", [False, True], ids=["plain", "pool"])
def test_geometries_go_both_ways_over_a_token_signed_connection(
    pool, postgis_server, azure_imds, azure_databases
):
    """The role signs in with the identity's token (plain, and Django's psycopg pool), GeoDjango's spatial
    operations are the backend's, and its geometry adapters are registered on our connections: a GEOS
    point goes in as a parameter and comes back as PostGIS computed it."""
    from django.contrib.gis.db.backends.postgis.operations import PostGISOperations
    from django.contrib.gis.geos import Point

    detach = postgis_server.attach(azure_imds)
    postgis_server.add_role(ROLE)
    options = {"pool": {"min_size": 1, "max_size": 2}} if pool else {}
    try:
        connections = azure_databases(
            default=postgis_server.database_settings(ROLE, ENGINE=POSTGIS, OPTIONS=options)
        )
        connection = connections["default"]
        assert isinstance(connection.ops, PostGISOperations)
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_user, postgis_lib_version()")
            user, version = cursor.fetchone()
            point = connection.ops.Adapter(Point(2.35, 48.85, srid=4326))
            cursor.execute("SELECT ST_AsText(%s), ST_SRID(%s)", [point, point])
            text, srid = cursor.fetchone()
        assert user == ROLE and version.startswith("3.")
        assert (text, srid) == ("POINT(2.35 48.85)", 4326)
        assert connection.ops.spatial_version >= (3, 0)
        connection.close()
        if pool:
            connection.close_pool()
    finally:
        detach()


@pytest.mark.integration
def test_azure_check_probes_a_postgis_alias(geo, capsys):
    call_command("azure_check", "--json", "--database", "default")
    (result,) = json.loads(capsys.readouterr().out)["results"]
    assert result["ok"] and result["service"] == "postgres", result
    assert result["details"]["current_user"] == ROLE


@pytest.mark.integration
def test_a_refused_sign_in_is_diagnosed_as_on_postgres(postgis_server, azure_imds, azure_databases):
    """A role nobody created: the same diagnosis as the Postgres ENGINE's, no token in it."""
    detach = postgis_server.attach(azure_imds)
    try:
        connections = azure_databases(default=postgis_server.database_settings("nobody", ENGINE=POSTGIS))
        with pytest.raises(Exception, match="Postgres refused the token for role 'nobody'") as info:
            connections["default"].ensure_connection()
        assert "eyJ" not in str(info.value)
    finally:
        detach()
