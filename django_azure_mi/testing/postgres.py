"""A token-checking Postgres, like Azure Database for PostgreSQL Flexible Server with Entra auth.

A throwaway cluster (``initdb`` into a temp dir, a free port on 127.0.0.1) that accepts TCP connections only
over TLS (``hostssl`` + ``scram-sha-256``), with a generated self-signed certificate, so ``sslmode=require``
is exercised and a plain-text connection is refused. Identity roles are wired to an
:class:`~django_azure_mi.testing.imds.IMDSEmulator`: when the emulator issues a token for the Postgres scope
to the role's identity, the role's password becomes that token, valid until the token's ``exp``. So only the
newest unexpired token of that identity logs in; an expired or superseded one gets "password authentication
failed" (Azure says "The access token has expired"; live sessions outlive their token on both).

    with PostgresStandIn() as pg:
        pg.add_role("app-identity")            # system-assigned identity; client_id=... for user-assigned
        detach = pg.attach(imds)
        DATABASES = {"default": pg.database_settings("app-identity")}

Needs PostgreSQL's server binaries (``/usr/lib/postgresql/*/bin`` or ``PG_BINDIR``) and psycopg 3 or psycopg2.
As root, the cluster runs as the ``postgres`` OS user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .certs import TLSFiles, make_tls_files
from .imds import IMDSEmulator, IssuedToken

POSTGRES_RESOURCE = "https://ossrdbms-aad.database.windows.net"
ENGINE = "django_azure_mi.backends.postgresql"


def find_bindir() -> str:
    """PostgreSQL server binaries: ``PG_BINDIR``, else the newest ``/usr/lib/postgresql/*/bin``, else PATH."""
    candidates = [os.environ.get("PG_BINDIR", "")]
    candidates += sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True
    )
    for candidate in candidates:
        if candidate and os.path.exists(os.path.join(candidate, "initdb")):
            return candidate
    initdb = shutil.which("initdb")
    if initdb:
        return os.path.dirname(initdb)
    raise RuntimeError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install PostgreSQL (Debian: postgresql) "
        "or set PG_BINDIR."
    )


def _driver() -> tuple[Any, Any]:
    """(driver module, its sql composition module): psycopg 3, else psycopg2."""
    try:
        import psycopg
        from psycopg import sql
    except ImportError:
        import psycopg2 as psycopg  # type: ignore[no-redef]
        from psycopg2 import sql  # type: ignore[no-redef]
    return psycopg, sql


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresStandIn:
    """See the module docstring. Context manager; thread-safe."""

    def __init__(self, *, dbname: str = "app", port: int = 0, resource: str = POSTGRES_RESOURCE) -> None:
        self.dbname = dbname
        self.port = port
        self.resource = resource
        self.host = "127.0.0.1"
        self.admin_user = "azure_admin"
        self.password_changes = 0  # how many tokens became passwords
        self._roles: dict[str, str | None] = {}  # role -> client id (None: system-assigned)
        self._lock = threading.Lock()
        self._admin: Any = None
        self._tmp: str | None = None
        self._run_as: str | None = None
        self.tls: TLSFiles | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def ca_file(self) -> str:
        assert self.tls is not None, "not started"
        return self.tls.ca_file

    @property
    def log_file(self) -> str:
        assert self._tmp is not None
        return os.path.join(self._tmp, "postgres.log")

    def start(self) -> PostgresStandIn:
        bindir = find_bindir()
        self._tmp = tempfile.mkdtemp(prefix="django-azure-mi-pg-")
        self._run_as = "postgres" if os.geteuid() == 0 else None
        tmp = Path(self._tmp)
        data, sock = tmp / "data", tmp / "sock"
        sock.mkdir()
        self.tls = make_tls_files(tmp / "tls")
        if self._run_as:
            user = pwd.getpwnam(self._run_as)
            for path in [tmp, sock, tmp / "tls", *(tmp / "tls").iterdir()]:
                os.chown(path, user.pw_uid, user.pw_gid)
        self.port = self.port or free_port()
        self._run(
            [
                f"{bindir}/initdb",
                "-D",
                str(data),
                "-U",
                self.admin_user,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ]
        )
        (data / "pg_hba.conf").write_text(
            "# local admin socket for the harness; TCP only over TLS with scram (as on Azure)\n"
            "local all all trust\n"
            "hostssl all all 127.0.0.1/32 scram-sha-256\n"
            "hostssl all all ::1/128 scram-sha-256\n"
        )
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(
                f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{sock}'\n"
                f"ssl = on\nssl_cert_file = '{self.tls.cert_file}'\nssl_key_file = '{self.tls.key_file}'\n"
                "password_encryption = 'scram-sha-256'\nfsync = off\nsynchronous_commit = off\n"
                "full_page_writes = off\nmax_connections = 200\nshared_buffers = 32MB\n"
            )
        self._run([f"{bindir}/pg_ctl", "-D", str(data), "-l", self.log_file, "-w", "-t", "60", "start"])
        self._bindir = bindir
        self._admin = self._connect_admin("postgres")
        self.execute(f'CREATE DATABASE "{self.dbname}"')
        return self

    def _connect_admin(self, dbname: str) -> Any:
        assert self._tmp
        driver, _ = _driver()
        conn = driver.connect(
            host=os.path.join(self._tmp, "sock"), port=self.port, user=self.admin_user, dbname=dbname
        )
        conn.autocommit = True
        return conn

    def stop(self) -> None:
        if self._admin is not None:
            with contextlib.suppress(Exception):
                self._admin.close()
            self._admin = None
        if self._tmp:
            with contextlib.suppress(Exception):
                self._run(
                    [
                        f"{self._bindir}/pg_ctl",
                        "-D",
                        os.path.join(self._tmp, "data"),
                        "-m",
                        "immediate",
                        "-w",
                        "stop",
                    ]
                )
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> PostgresStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, cmd: list[str]) -> None:
        if self._run_as:
            cmd = ["runuser", "-u", self._run_as, "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=self._tmp, check=False)
        if done.returncode != 0:
            log = ""
            if self._tmp and os.path.exists(self.log_file):
                log = Path(self.log_file).read_text()[-2000:]
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}\n{log}")

    # ------------------------------------------------------------------ roles and tokens

    def execute(self, sql: Any, params: Any = None, dbname: str | None = None) -> list[tuple[Any, ...]]:
        """Run SQL as the superuser (in ``dbname``, default the maintenance db); return the rows."""
        with self._lock:
            conn = self._connect_admin(dbname) if dbname else self._admin
            try:
                cur = conn.cursor()
                cur.execute(sql, params)
                return cur.fetchall() if cur.description else []
            finally:
                if dbname:
                    conn.close()

    def add_role(self, name: str, client_id: str | None = None, *, createdb: bool = True) -> None:
        """Create the Postgres role of an identity (like ``pgaadauth_create_principal``) with rights on the
        database. Its password follows the identity's tokens once :meth:`attach` ed. Idempotent."""
        _, sql = _driver()
        role = sql.Identifier(name)
        with self._lock:
            self._roles[name] = client_id
        if not self.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [name]):
            self.execute(sql.SQL("CREATE ROLE {} LOGIN" + (" CREATEDB" if createdb else "")).format(role))
            self.execute(sql.SQL("GRANT ALL ON DATABASE {} TO {}").format(sql.Identifier(self.dbname), role))
            self.execute(sql.SQL("GRANT ALL ON SCHEMA public TO {}").format(role), dbname=self.dbname)

    def attach(self, imds: IMDSEmulator) -> Callable[[], None]:
        """Follow ``imds``: each token it issues for the Postgres scope becomes its identity's role password.
        Returns a function that detaches."""
        return imds.on_token(self._on_token)

    def _on_token(self, issued: IssuedToken) -> None:
        if issued.resource.rstrip("/") != self.resource.rstrip("/"):
            return
        with self._lock:
            roles = [role for role, cid in self._roles.items() if cid == issued.identity.client_id]
        for role in roles:
            self.set_password(role, issued.token, issued.expires_on)

    def set_password(self, role: str, password: str | None, valid_until: int | None = None) -> None:
        """Set (or with None, remove) a role's password, optionally expiring at ``valid_until`` (epoch)."""
        _, sql = _driver()
        if password is None:
            self.execute(sql.SQL("ALTER ROLE {} PASSWORD NULL").format(sql.Identifier(role)))
            return
        until = (
            sql.SQL(" VALID UNTIL {}").format(sql.Literal(_timestamp(valid_until)))
            if valid_until
            else sql.SQL("")
        )
        self.execute(
            sql.SQL("ALTER ROLE {} PASSWORD {}{}").format(sql.Identifier(role), sql.Literal(password), until)
        )
        with self._lock:
            self.password_changes += 1

    def reset_passwords(self) -> None:
        """Forget every token (between tests)."""
        with self._lock:
            roles = list(self._roles)
        for role in roles:
            self.set_password(role, None)

    def terminate_sessions(self, role: str | None = None) -> None:
        """Kill the sessions of ``role`` (all client sessions if None), like a server restart would."""
        self.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'client backend' "
            "AND pid <> pg_backend_pid() AND (%s::text IS NULL OR usename = %s)",
            [role, role],
        )

    def sessions(self, role: str) -> int:
        """How many sessions ``role`` has open."""
        return int(self.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s", [role])[0][0])

    # ------------------------------------------------------------------ client settings

    def database_settings(self, role: str, *, client_id: str | None = None, **extra: Any) -> dict[str, Any]:
        """A ``DATABASES`` entry for our ENGINE that reaches this server as ``role``."""
        options: dict[str, Any] = {"sslmode": "verify-full", "sslrootcert": self.ca_file}
        if client_id:
            options["managed_identity"] = {"client_id": client_id}
        options.update(extra.pop("OPTIONS", {}))
        return {
            "ENGINE": ENGINE,
            "HOST": self.host,
            "PORT": self.port,
            "NAME": self.dbname,
            "USER": role,
            "OPTIONS": options,
            **extra,
        }


def _timestamp(epoch: int) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isoformat()
