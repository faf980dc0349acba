"""A token-checking Postgres, like Azure Database for PostgreSQL Flexible Server with Entra auth.

A throwaway cluster (``initdb`` into a temp dir) that listens on a private Unix socket only, behind the
sign-in gateway of :mod:`.pggateway` on a free TCP port of 127.0.0.1. As on Azure:

* TCP connections must use TLS (a generated self-signed certificate; ``ca_file`` to verify it);
* the password is a token, sent in clear inside TLS, and *every* unexpired token that the attached
  :class:`~django_azure_mi.testing.imds.IMDSEmulator` issued to the role's identity signs in, any number
  at once (many processes hold different tokens); it is checked as Azure checks it: signature, ``aud``,
  ``exp``/``nbf``, and ``oid`` = the role's identity. Expired, wrong-audience and another identity's tokens
  get FATAL messages that tell them apart (``The access token has expired...``);
* live sessions outlive their token (it is checked only at sign-in).

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
import ssl
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .base import Missing, StandIn
from .certs import make_tls_files
from .imds import IMDSEmulator
from .net import free_port
from .pgaadauth import EntraPrincipals
from .pggateway import Gateway
from .pgsignin import SignIns

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
    raise Missing(
        "the Postgres stand-in needs PostgreSQL's server binaries (initdb, pg_ctl): install PostgreSQL "
        "(Debian: postgresql) or set PG_BINDIR; or leave postgres out (--services)."
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


def runuser() -> str:
    """util-linux's runuser: as root, the server runs as ``postgres`` (initdb refuses root)."""
    found = shutil.which("runuser") or next(
        (path for path in ("/usr/sbin/runuser", "/sbin/runuser") if os.path.exists(path)), None
    )
    if found is None:
        raise Missing(
            "as root the Postgres stand-in runs the server as the user postgres with runuser (util-linux), "
            "which is not on PATH: add /usr/sbin to PATH or install util-linux; or run as another user."
        )
    return found


class PostgresStandIn(SignIns, EntraPrincipals, StandIn):
    """See the module docstring. Context manager; thread-safe."""

    def __init__(
        self, *, dbname: str = "app", port: int = 0, resource: str = POSTGRES_RESOURCE, direct: bool = False
    ) -> None:
        """``direct``: the real server also listens on TCP (``direct_port``) with its own TLS and password
        authentication, bypassing the gateway (to measure what the gateway adds)."""
        self.dbname = dbname
        self.direct = direct
        self.port = port
        self.resource = resource
        self.host = "127.0.0.1"
        self.admin_user = "azure_admin"
        self._roles: dict[str, str | None] = {}  # role -> client id (None: system-assigned)
        self._passwords: dict[str, str] = {}  # roles that sign in with a password, not a token
        self._attached: list[IMDSEmulator] = []  # attach() stack: the last one checks tokens
        self._gateway: Gateway | None = None
        self._server_port = 0
        self._lock = threading.Lock()
        self._admin: Any = None
        self._tmp: str | None = None
        self._run_as: str | None = None

    # ------------------------------------------------------------------ lifecycle

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
            "# only the private socket: clients sign in through the gateway (TLS + token) on the TCP port\n"
            "local all all trust\n" + ("hostssl all all 127.0.0.1/32 password\n" if self.direct else "")
        )
        self._server_port = free_port()  # names the socket file (and the TCP port when direct)
        listen = "127.0.0.1" if self.direct else ""
        tls = f"ssl = on\nssl_cert_file = '{self.tls.cert_file}'\nssl_key_file = '{self.tls.key_file}'\n"
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(
                f"\nlisten_addresses = '{listen}'\nport = {self._server_port}\n"
                f"unix_socket_directories = '{sock}'\n" + (tls if self.direct else "") + "fsync = off\n"
                "synchronous_commit = off\n"
                "full_page_writes = off\nmax_connections = 200\nshared_buffers = 32MB\n"
            )
        self._run([f"{bindir}/pg_ctl", "-D", str(data), "-l", self.log_file, "-w", "-t", "60", "start"])
        self._bindir = bindir
        self._admin = self._connect_admin("postgres")
        self.execute(f'CREATE DATABASE "{self.dbname}"')
        self._install_principals()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.tls.cert_file, self.tls.key_file)
        self._gateway = Gateway(self.host, self.port, context, self._check, self._backend)
        return self

    def _backend(self) -> socket.socket:
        assert self._tmp
        server = socket.socket(socket.AF_UNIX)
        server.connect(os.path.join(self._tmp, "sock", f".s.PGSQL.{self._server_port}"))
        return server

    def _connect_admin(self, dbname: str) -> Any:
        assert self._tmp
        driver, _ = _driver()
        conn = driver.connect(
            host=os.path.join(self._tmp, "sock"), port=self._server_port, user=self.admin_user, dbname=dbname
        )
        conn.autocommit = True
        return conn

    def stop(self) -> None:
        if self._gateway is not None:
            self._gateway.close()
            self._gateway = None
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

    def restart(self, downtime: float = 1.0) -> None:
        """Restart the server as a maintenance restart or failover does: every session is terminated, sign-ins
        fail for ``downtime`` seconds (the gateway closes them after the token check, as the server is
        down), then the server is back with its data. Tokens stay valid."""
        assert self._tmp, "not started"
        data = os.path.join(self._tmp, "data")
        with self._lock:
            with contextlib.suppress(Exception):
                self._admin.close()
            self._run([f"{self._bindir}/pg_ctl", "-D", data, "-m", "fast", "-w", "stop"])
            time.sleep(downtime)
            self._run([f"{self._bindir}/pg_ctl", "-D", data, "-l", self.log_file, "-w", "-t", "60", "start"])
            self._admin = self._connect_admin("postgres")

    def _run(self, cmd: list[str]) -> None:
        if self._run_as:
            cmd = [runuser(), "-u", self._run_as, "--", *cmd]
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
        database; once :meth:`attach` ed, every unexpired token of that identity signs in. Idempotent."""
        _, sql = _driver()
        role = sql.Identifier(name)
        with self._lock:
            self._roles[name] = client_id
        if not self.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [name]):
            self.execute(sql.SQL("CREATE ROLE {} LOGIN" + (" CREATEDB" if createdb else "")).format(role))
            self.execute(sql.SQL("GRANT ALL ON DATABASE {} TO {}").format(sql.Identifier(self.dbname), role))
            self.execute(sql.SQL("GRANT ALL ON SCHEMA public TO {}").format(role), dbname=self.dbname)

    def terminate_sessions(self, role: str | None = None, *, dbname: str | None = None) -> None:
        """Kill the sessions of ``role`` (all client sessions if None) on ``dbname`` (every database if
        None), like a server restart would."""
        self.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'client backend' "
            "AND pid <> pg_backend_pid() AND (%s::text IS NULL OR usename = %s) "
            "AND (%s::text IS NULL OR datname = %s)",
            [role, role, dbname, dbname],
        )

    def sessions(self, role: str) -> int:
        """How many sessions ``role`` has open."""
        return int(self.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s", [role])[0][0])

    # ------------------------------------------------------------------ client settings

    def database_settings(self, role: str, *, client_id: str | None = None, **extra: Any) -> dict[str, Any]:
        """A ``DATABASES`` entry for our ENGINE that reaches this server as ``role``."""
        return database_entry(self.host, self.port, self.dbname, role, self.ca_file, client_id, **extra)


def database_entry(
    host: str, port: int, name: str, role: str, ca_file: str, client_id: str | None = None, **extra: Any
) -> dict[str, Any]:
    """A ``DATABASES`` entry for our ENGINE that reaches a stand-in at ``host``:``port`` as ``role``."""
    options: dict[str, Any] = {"sslmode": "verify-full", "sslrootcert": ca_file}
    if client_id:
        options["managed_identity"] = {"client_id": client_id}
    options.update(extra.pop("OPTIONS", {}))
    entry = {"ENGINE": ENGINE, "HOST": host, "PORT": port, "NAME": name, "USER": role, "OPTIONS": options}
    return {**entry, **extra}
