"""A token-checking MySQL, like Azure Database for MySQL Flexible Server with Microsoft Entra authentication.

A throwaway MariaDB (``mariadb-install-db`` into a temp dir; Oracle's MySQL is not packaged by Debian) that
listens on a private Unix socket only, behind the sign-in gateway of :mod:`.mysqlgateway` on a free TCP port
of 127.0.0.1. As on Azure:

* TLS is required (a generated self-signed certificate; ``ca_file`` to verify it); a client that doesn't ask
  for it gets error 3159;
* a Microsoft Entra user (:meth:`add_user`, what ``CREATE AADUSER 'name' IDENTIFIED BY '<client id>'``
  makes) signs in with a token sent in clear (``mysql_clear_password``, asked for if the client didn't use
  it), and *every* unexpired token that the attached :class:`~django_azure_mi.testing.imds.IMDSEmulator`
  issued to its identity is accepted; refusals are error 1045 (``refusals`` says why);
* live sessions outlive their token (it is checked only at sign-in);
* a password user (:meth:`set_password`) signs in as on Azure's built-in MySQL authentication;
* the server's Microsoft Entra admin (:meth:`add_entra_admin`, signing in with its own token) runs Azure's
  ``SET aad_auth_validate_oids_in_tenant = OFF`` and ``CREATE AADUSER 'name' IDENTIFIED BY '<client id>'``
  (or ``CREATE AADUSER 'name'``: an identity the attached endpoint knows by that name), which make a user
  with no privileges, bound to that identity, and grants as the real server does (users are
  ``'name'@'%'``, as Azure's).

    with MySQLStandIn() as my:
        my.add_user("app-identity")             # system-assigned identity; client_id=... for user-assigned
        detach = my.attach(imds)
        DATABASES = {"default": my.database_settings("app-identity")}

Where MariaDB 10.11 behind it differs from Azure's MySQL 8: docs/azure-behaviour.md. Needs MariaDB's server
(Debian: mariadb-server) and PyMySQL (the stand-in's own admin connection).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import Missing, StandIn
from .certs import make_tls_files
from .gateway import attach_to, token_problem
from .imds import IMDSEmulator
from .mysqlgateway import OK_PACKET, MySQLGateway, User, error_packet

MYSQL_RESOURCE = "https://ossrdbms-aad.database.windows.net"  # the same as Postgres's on Azure
ENGINE = "django_azure_mi.backends.mysql"
AADUSER = re.compile(r"\s*CREATE\s+AADUSER\s+'([^'\\]+)'(?:\s+IDENTIFIED\s+BY\s+'([^'\\]*)')?\s*;?\s*$", re.I)
VALIDATE_OIDS = re.compile(
    r"\s*SET\s+(?:SESSION\s+|GLOBAL\s+)?aad_auth_validate_oids_in_tenant\s*=\s*(ON|OFF|0|1)\s*;?\s*$", re.I
)


@dataclass(frozen=True)
class _Entra:
    """How a Microsoft Entra user is bound: to the identity of a client id (None: the system-assigned one),
    or to an object id (an admin, or a principal found by its name); its password inside the real server."""

    client_id: str | None
    object_id: str | None
    internal: str
    admin: bool = False


def find_mariadb() -> tuple[str, str]:
    """(mariadbd, mariadb-install-db): ``MARIADBD`` or Debian's ``/usr/sbin/mariadbd`` or PATH."""
    server = os.environ.get("MARIADBD") or next(
        (p for p in ("/usr/sbin/mariadbd", shutil.which("mariadbd") or "") if p and os.path.exists(p)), ""
    )
    install = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db") or ""
    if not server or not install:
        raise Missing(
            "the MySQL stand-in needs MariaDB's server (mariadbd, mariadb-install-db): install it (Debian: "
            "mariadb-server) or set MARIADBD; or leave mysql out."
        )
    return server, install


class MySQLStandIn(StandIn):
    """See the module docstring. Context manager; thread-safe."""

    def __init__(self, *, dbname: str = "app", port: int = 0, resource: str = MYSQL_RESOURCE) -> None:
        self.dbname, self.port, self.resource = dbname, port, resource
        self.host = "127.0.0.1"
        self._users: dict[str, _Entra] = {}  # Microsoft Entra users
        self._passwords: set[str] = set()  # users that sign in with their own password
        self._attached: list[IMDSEmulator] = []  # attach() stack: the last one checks tokens
        self._gateway: MySQLGateway | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._tmp: str | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def socket_path(self) -> str:
        assert self._tmp is not None, "not started"
        return os.path.join(self._tmp, "mysqld.sock")

    def start(self) -> MySQLStandIn:
        server, install = find_mariadb()
        self._tmp = tempfile.mkdtemp(prefix="django-azure-mi-mysql-")
        tmp = Path(self._tmp)
        self.tls = make_tls_files(tmp / "tls")
        data, log = tmp / "data", tmp / "mysqld.log"
        # its own temporary files' directory: servers sharing /tmp (several stand-ins at once: pytest-xdist)
        # collided on their temporary tables' names, which failed an install or aborted a server
        scratch = tmp / "tmp"
        scratch.mkdir()
        as_root = ["--user=root"] if os.geteuid() == 0 else []
        done = subprocess.run(
            [install, "--no-defaults", f"--datadir={data}", f"--tmpdir={scratch}",
             "--auth-root-authentication-method=normal",
             "--skip-test-db", "--skip-name-resolve", *as_root],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        self._process = subprocess.Popen(
            [server, "--no-defaults", f"--datadir={data}", f"--tmpdir={scratch}",
             f"--socket={self.socket_path}", "--skip-networking", f"--log-error={log}", "--skip-name-resolve",
             "--innodb-flush-log-at-trx-commit=0",
             # Azure's MySQL 8 default (utf8mb4_0900_ai_ci there; MariaDB has no 0900 collations)
             "--character-set-server=utf8mb4", "--collation-server=utf8mb4_general_ci",
             "--innodb-doublewrite=0", "--max-connections=300", *as_root],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not self._answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                text = log.read_text()[-2000:] if log.exists() else ""
                raise RuntimeError(f"mariadbd did not start:\n{text}")
            time.sleep(0.1)
        self.execute(f"CREATE DATABASE IF NOT EXISTS `{self.dbname}`")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.tls.cert_file, self.tls.key_file)
        self._gateway = MySQLGateway(self.host, self.port, context, self._user, self._backend)
        self.port = self._gateway.port
        return self

    def _answers(self) -> bool:
        try:
            self.execute("SELECT 1")
        except Exception:
            return False
        return True

    def stop(self) -> None:
        if self._gateway is not None:
            self._gateway.close()
            self._gateway = None
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)  # a throwaway server: nothing to flush
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(10)
            self._process = None
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def _backend(self) -> socket.socket:
        server = socket.socket(socket.AF_UNIX)
        server.connect(self.socket_path)
        return server

    # ------------------------------------------------------------------ users and tokens

    def execute(self, sql: str, params: Any = None, database: str | None = None) -> list[tuple[Any, ...]]:
        """Run SQL as MariaDB's root over the private socket; return the rows."""
        import pymysql

        conn = pymysql.connect(unix_socket=self.socket_path, user="root", database=database, autocommit=True)
        try:
            with conn.cursor() as cursor:
                cursor.execute(sql, params)
                return list(cursor.fetchall())
        finally:
            conn.close()

    def add_user(self, name: str, client_id: str | None = None) -> None:
        """A Microsoft Entra user bound to an identity (Azure: ``CREATE AADUSER 'name' IDENTIFIED BY
        '<client id>'``; None: the system-assigned one), with every privilege (Azure: what the admin
        grants; Django's test databases need CREATE). Idempotent."""
        internal = secrets.token_hex(16)
        with self._lock:
            self._users[name] = _Entra(client_id, None, internal)
            self._passwords.discard(name)
        self._create(name, internal, "ALL PRIVILEGES ON *.*")

    def add_entra_admin(self, name: str, object_id: str) -> None:
        """The server's Microsoft Entra admin (Azure: ``az mysql flexible-server ad-admin create``): signs
        in with tokens of ``object_id`` (a user's, or an identity's), may do everything and grant it, and
        runs ``CREATE AADUSER``."""
        internal = secrets.token_hex(16)
        with self._lock:
            self._users[name] = _Entra(None, object_id, internal, admin=True)
            self._passwords.discard(name)
        self._create(name, internal, "ALL PRIVILEGES ON *.*", grant_option=True)

    def set_password(self, name: str, password: str) -> None:
        """A user that signs in with ``password`` (Azure's built-in MySQL authentication)."""
        with self._lock:
            self._users.pop(name, None)
            self._passwords.add(name)
        self._create(name, password, "ALL PRIVILEGES ON *.*")

    def _create(self, name: str, password: str, privileges: str | None, grant_option: bool = False) -> None:
        self.execute("CREATE OR REPLACE USER %s@'%%' IDENTIFIED BY %s", [name, password])
        if privileges:
            option = " WITH GRANT OPTION" if grant_option else ""
            self.execute(f"GRANT {privileges} TO %s@'%%'{option}", [name])

    def _admin_statement(self, sql: str) -> bytes | None:
        """The answer to a statement of the Entra admin's that only Azure's MySQL knows; None for the rest."""
        if VALIDATE_OIDS.match(sql):
            return OK_PACKET  # the stand-in looks nothing up in a tenant, with or without it
        found = AADUSER.match(sql)
        if found is None:
            return None
        name, client_id = found[1], found[2]
        with self._lock:
            exists = name in self._users or name in self._passwords
            imds = self._attached[-1] if self._attached else None
        object_id = None
        if client_id is None:  # a principal by its name in the tenant: an identity the endpoint knows
            named = [i for i in (imds.identities() if imds else []) if i.name == name]
            if not named:
                return error_packet(1396, "HY000", f"Operation CREATE USER failed for '{name}'@'%': no "
                                    "Microsoft Entra principal of that name")  # fmt: skip
            object_id = named[0].object_id
        if exists:
            return error_packet(1396, "HY000", f"Operation CREATE USER failed for '{name}'@'%'")
        internal = secrets.token_hex(16)
        self._create(name, internal, None)  # no privileges until granted
        with self._lock:
            self._users[name] = _Entra(client_id, object_id, internal)
        return OK_PACKET

    def attach(self, imds: IMDSEmulator) -> Callable[[], None]:
        """Check tokens against ``imds`` until the returned function is called (attachments stack)."""
        return attach_to(self._lock, self._attached, imds)

    def _user(self, name: str) -> User | None:
        with self._lock:
            entra = self._users.get(name)
            imds = self._attached[-1] if self._attached else None
        if entra is None:
            return None  # a password user, or nobody: the real server decides

        def check(token: str) -> str | None:
            if imds is None:
                return "no identity endpoint attached to the stand-in"
            oid: str | None = entra.object_id
            if oid is None:
                try:
                    oid = imds.object_id(entra.client_id)
                except KeyError:
                    oid = None
            return token_problem(
                token, key=imds.public_key(), resource=self.resource, oid=oid, now=imds.now()
            )

        return User(check, entra.internal, self._admin_statement if entra.admin else None)

    @property
    def sign_ins(self) -> int:
        return self._gateway.sign_ins if self._gateway else 0

    @property
    def refusals(self) -> list[str]:
        """Why token sign-ins were refused, oldest first (``user: expired``, ``user: identity <oid>``…)."""
        return list(self._gateway.refusals) if self._gateway else []

    # ------------------------------------------------------------------ client settings

    def database_settings(self, user: str, *, client_id: str | None = None, **extra: Any) -> dict[str, Any]:
        """A ``DATABASES`` entry for our ENGINE that reaches this server as ``user``."""
        entry = database_entry(self.host, self.port, self.dbname, user, self.ca_file)
        if client_id:
            entry["OPTIONS"]["managed_identity"] = {"client_id": client_id}
        entry["OPTIONS"].update(extra.pop("OPTIONS", {}))
        return {**entry, **extra}


def database_entry(host: str, port: int, name: str, user: str, ca_file: str) -> dict[str, Any]:
    """A ``DATABASES`` entry for our ENGINE on a MySQL stand-in (verified with its CA)."""
    return {"ENGINE": ENGINE, "HOST": host, "PORT": port, "NAME": name, "USER": user,
            "OPTIONS": {"ssl": {"ca": ca_file}}}  # fmt: skip
