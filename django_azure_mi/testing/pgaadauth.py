"""Azure's Microsoft Entra principals in the Postgres stand-in: ``pgaadauth_create_principal`` and
``pgaadauth_create_principal_with_oid``, and an Entra admin who runs them.

On Azure a principal is a role with a ``pgaadauth`` security label that binds it to an Entra object id, and
``pgaadauth_create_principal(name, …)`` finds the object by its display name in the tenant (a user's
principal name; a group's or service principal's display name, which must be unique). Here the label is a
row of ``azure_standin.principals`` (a security label needs a C label provider), the tenant's directory is
``azure_standin.directory``, filled from the attached identity endpoint's identities (:meth:`sync_directory`,
called by ``attach``), and the gateway lets a principal's role in with its object id's tokens. The functions
live in the ``postgres`` database, where Azure's Entra admin runs them; ``azure_pg_admin`` may execute them
and owns the app database, as on Azure, so its members can grant on it and on its ``public`` schema.
:meth:`EntraPrincipals.create_extensions` creates what Azure's allow-list lets an admin create. Where this
differs from Azure: docs/azure-behaviour.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .imds import IMDSEmulator

INSTALL = """
CREATE ROLE azure_pg_admin NOLOGIN;
CREATE SCHEMA azure_standin;
CREATE TABLE azure_standin.principals (
    rolname name PRIMARY KEY, object_id text NOT NULL, object_type text NOT NULL, is_admin boolean NOT NULL
);
CREATE TABLE azure_standin.directory (
    display_name text NOT NULL, object_id text NOT NULL, object_type text NOT NULL
);
CREATE FUNCTION public.pgaadauth_create_principal_with_oid(
    "roleName" text, "objectId" text, "objectType" text, "isAdmin" boolean, "isMfa" boolean
) RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    IF "objectType" NOT IN ('user', 'group', 'service') THEN
        RAISE EXCEPTION 'Invalid object type "%": use user, group or service', "objectType";
    END IF;
    IF "objectId" !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
        RAISE EXCEPTION 'Invalid object id "%"', "objectId";
    END IF;
    EXECUTE format('CREATE ROLE %I LOGIN', "roleName");
    IF "isAdmin" THEN
        EXECUTE format('GRANT azure_pg_admin TO %I', "roleName");
        EXECUTE format('ALTER ROLE %I CREATEROLE CREATEDB', "roleName");
    END IF;
    INSERT INTO azure_standin.principals VALUES ("roleName", lower("objectId"), "objectType", "isAdmin");
    RETURN format('Created role for "%s"', "roleName");
END $$;
CREATE FUNCTION public.pgaadauth_create_principal("roleName" text, "isAdmin" boolean, "isMfa" boolean)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE
    matches integer;
    found record;
BEGIN
    SELECT count(*) INTO matches FROM azure_standin.directory WHERE display_name = "roleName";
    IF matches = 0 THEN
        RAISE EXCEPTION 'Could not find a Microsoft Entra principal named "%"', "roleName";
    ELSIF matches > 1 THEN
        RAISE EXCEPTION 'More than one Microsoft Entra principal is named "%": use '
            'pgaadauth_create_principal_with_oid', "roleName";
    END IF;
    SELECT * INTO found FROM azure_standin.directory WHERE display_name = "roleName";
    RETURN public.pgaadauth_create_principal_with_oid(
        "roleName", found.object_id, found.object_type, "isAdmin", "isMfa"
    );
END $$;
REVOKE ALL ON FUNCTION public.pgaadauth_create_principal_with_oid(text, text, text, boolean, boolean)
    FROM PUBLIC;
REVOKE ALL ON FUNCTION public.pgaadauth_create_principal(text, boolean, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.pgaadauth_create_principal_with_oid(text, text, text, boolean, boolean)
    TO azure_pg_admin;
GRANT EXECUTE ON FUNCTION public.pgaadauth_create_principal(text, boolean, boolean) TO azure_pg_admin;
"""


class ExtensionMissing(RuntimeError):
    """An extension the PostgreSQL installation doesn't have (its package is not installed)."""


class EntraPrincipals:
    """A mixin of PostgresStandIn (its ``execute``, ``dbname``, ``_attached`` and ``_lock``)."""

    dbname: str
    _attached: list[IMDSEmulator]

    if TYPE_CHECKING:  # PostgresStandIn's

        def execute(
            self, sql: Any, params: Any = None, dbname: str | None = None
        ) -> list[tuple[Any, ...]]: ...

    def _install_principals(self) -> None:
        """At start: the functions, the bookkeeping, and the app database owned by ``azure_pg_admin``."""
        self.execute(INSTALL)
        self.execute(f'ALTER DATABASE "{self.dbname}" OWNER TO azure_pg_admin')

    def add_entra_admin(self, name: str, object_id: str) -> None:
        """A Microsoft Entra admin of the server (Azure: ``az postgres flexible-server microsoft-entra-admin
        create``): the role ``name``, a member of ``azure_pg_admin`` bound to ``object_id``."""
        self.execute(
            "SELECT public.pgaadauth_create_principal_with_oid(%s, %s, 'user', true, false) "
            "WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %s)",
            [name, object_id, name],
        )

    def sync_directory(self, imds: IMDSEmulator | None = None) -> None:
        """The tenant's directory for ``pgaadauth_create_principal``: the identities of ``imds`` (default:
        the attached identity endpoint) by name, as service principals."""
        imds = imds or (self._attached[-1] if self._attached else None)
        if imds is None:
            return
        rows = [(identity.name, identity.object_id) for identity in imds.identities()]
        self.execute("DELETE FROM azure_standin.directory")
        for name, object_id in rows:
            self.execute(
                "INSERT INTO azure_standin.directory VALUES (%s, %s, 'service')", [name, object_id.lower()]
            )

    def create_extensions(self, *names: str) -> None:
        """Create extensions in ``template1`` and the app database, as Azure does for those the server
        allow-lists (``azure.extensions``) where the app's role can't create them itself (PostGIS, hstore,
        …): every database made afterwards (Django's test databases) has them. :class:`ExtensionMissing`
        names what this machine lacks (PostGIS: Debian's ``postgresql-15-postgis-3``)."""
        available = {str(row[0]) for row in self.execute("SELECT name FROM pg_available_extensions")}
        missing = [name for name in names if name not in available]
        if missing:
            raise ExtensionMissing(
                f"the PostgreSQL server has no {', '.join(missing)} extension: install its package "
                "(PostGIS on Debian: apt-get install postgresql-15-postgis-3, for the server's major version)"
            )
        for dbname in ("template1", self.dbname):
            for name in names:
                self.execute(f'CREATE EXTENSION IF NOT EXISTS "{name}"', dbname=dbname)

    def bound_object_id(self, role: str) -> str | None:
        """The object id whose tokens sign in as ``role``, bound by the functions (None: not a principal)."""
        rows = self.execute("SELECT object_id FROM azure_standin.principals WHERE rolname = %s", [role])
        return str(rows[0][0]) if rows else None
