"""Local Azure outside pytest: the stand-ins started and wired together, and the environment that points a
settings.py at them.

    python -m django_azure_mi.testing [--services postgres,redis,storage,keyvault[,mysql]]
                                      [--env-file .env.azure] [--redis-policy oss|enterprise|none|single]

prints ``export NAME='value'`` lines (and writes them to ``--env-file``), then serves until SIGINT or
SIGTERM, when every stand-in stops (Postgres, redis-server, Azurite, the in-process servers) and its
temporary directory goes. The variables:

* the identity endpoint: ``AZURE_POD_IDENTITY_AUTHORITY_HOST`` (the real azure-identity's
  ``ManagedIdentityCredential`` asks the emulator), ``AZURE_CLIENT_ID`` unset (the system-assigned identity)
  or, with ``--client-id`` (repeatable: user-assigned identities of the host), the first one's;
* ``AZURE_POSTGRES_HOST``/``_PORT``/``_NAME``/``_USER``/``_SSLROOTCERT``;
* with ``mysql`` among the services (not started by default: it needs MariaDB's server),
  ``AZURE_MYSQL_HOST``/``_PORT``/``_NAME``/``_USER``/``_SSL_CA``;
* ``AZURE_REDIS_URL``, ``AZURE_REDIS_CA_CERTS``, ``AZURE_REDIS_USERNAME`` (the identity's object id),
  ``AZURE_REDIS_POLICY``: Azure Managed Redis with the OSS clustering policy (``oss``, AMR's default),
  ``enterprise`` or ``none`` (Non-clustered), or ``single`` (Azure Cache for Redis);
* ``AZURE_STORAGE_ACCOUNT_URL``, ``AZURE_STORAGE_CONTAINER``, ``AZURE_STORAGE_CA_BUNDLE``;
* ``AZURE_KEY_VAULT_URL`` (read by :func:`django_azure_mi.keyvault.secret`) with a ``django-secret-key``;
* ``REQUESTS_CA_BUNDLE``: the stand-ins' CAs, for the SDKs.

The example project's settings read exactly these (``example_project/demo_site/settings.py``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Any

SERVICES = ("postgres", "redis", "storage", "keyvault")  # the default
OPTIONAL_SERVICES = ("mysql",)  # asked for by name
_REDIS_KINDS = {
    "single": "Azure Cache for Redis",
    "none": "Azure Managed Redis, Non-clustered policy",
    "oss": "Azure Managed Redis, OSS clustering policy",
    "enterprise": "Azure Managed Redis, Enterprise clustering policy",
}
CONTAINER = "media"  # created by the CLI, named by AZURE_STORAGE_CONTAINER


def add_redis_policy(parser: Any) -> None:
    """The ``--redis-policy`` option of the stand-ins CLI and the demo."""
    parser.add_argument(
        "--redis-policy",
        default="oss",
        choices=("oss", "enterprise", "none", "single"),
        help="the Redis: Azure Managed Redis with the OSS (default, as AMR's), Enterprise or Non-clustered "
        "('none') clustering policy, or Azure Cache for Redis ('single')",
    )


class LocalAzure:
    """The chosen stand-ins, wired to one IMDS emulator. Context manager: ``env`` once entered."""

    def __init__(
        self,
        services: tuple[str, ...] = SERVICES,
        *,
        ttl: float = 3600,
        redis_policy: str = "oss",
        client_ids: tuple[str, ...] = (),
    ) -> None:
        """``client_ids``: user-assigned identities of the host, each with access to every stand-in; the
        first is the site's (``AZURE_CLIENT_ID``, the Postgres role and Redis user exported). Without
        them the site uses the system-assigned identity."""
        from .redis import POLICIES

        unknown = set(services) - set(SERVICES) - set(OPTIONAL_SERVICES)
        if unknown:
            known = ", ".join(SERVICES + OPTIONAL_SERVICES)
            raise ValueError(f"unknown services {sorted(unknown)}; choose from {known}")
        if redis_policy not in POLICIES:
            raise ValueError(f"unknown Redis policy {redis_policy!r}; choose from {', '.join(POLICIES)}")
        self.services, self.ttl, self.redis_policy = services, ttl, redis_policy
        self.client_ids = client_ids
        self.env: dict[str, str] = {}
        self.unset: list[str] = []
        self.lines: list[str] = []  # what is running where, for people
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> LocalAzure:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _start(self) -> None:
        from .imds import IMDSEmulator

        stack = self._stack
        imds = stack.enter_context(IMDSEmulator(ttl=self.ttl))
        self.imds = imds
        for name, value in imds.environ().items():
            if value is None:
                self.unset.append(name)
            else:
                self.env[name] = value
        self.lines.append(f"identity endpoint (IMDS)  {imds.url}   object id {imds.object_id()}")
        users = [imds.add_identity(client_id) for client_id in self.client_ids]
        for user in users:
            self.lines.append(f"user-assigned identity    {user.client_id}   object id {user.object_id}")
        site = users[0] if users else imds.identity(None)  # the identity the site signs in with
        if users:
            self.env["AZURE_CLIENT_ID"] = str(users[0].client_id)
        else:  # the system-assigned identity, whatever the shell had
            self.unset.append("AZURE_CLIENT_ID")
        identities = [imds.identity(None), *users]
        cas: list[str] = []
        if "postgres" in self.services:
            from .postgres import PostgresStandIn

            pg = stack.enter_context(PostgresStandIn())
            for identity in identities:
                pg.add_role(identity.name, identity.client_id)
            stack.callback(pg.attach(imds))
            self.env.update(
                AZURE_POSTGRES_HOST=pg.host,
                AZURE_POSTGRES_PORT=str(pg.port),
                AZURE_POSTGRES_NAME=pg.dbname,
                AZURE_POSTGRES_USER=site.name,
                AZURE_POSTGRES_SSLROOTCERT=pg.ca_file,
            )
            where = f"{pg.host}:{pg.port}/{pg.dbname}"
            self.lines.append(f"PostgreSQL (TLS, tokens)  {where}  role {site.name!r}")
        if "mysql" in self.services:
            from .mysql import MySQLStandIn

            my = stack.enter_context(MySQLStandIn())
            for identity in identities:
                my.add_user(identity.name, identity.client_id)
            stack.callback(my.attach(imds))
            self.env.update(
                AZURE_MYSQL_HOST=my.host,
                AZURE_MYSQL_PORT=str(my.port),
                AZURE_MYSQL_NAME=my.dbname,
                AZURE_MYSQL_USER=site.name,
                AZURE_MYSQL_SSL_CA=my.ca_file,
            )
            where = f"{my.host}:{my.port}/{my.dbname}"
            self.lines.append(f"MySQL (TLS, tokens)       {where}  user {site.name!r}")
        if "redis" in self.services:
            from .redis import redis_stand_in

            redis = stack.enter_context(redis_stand_in(self.redis_policy))
            for identity in identities:
                redis.add_identity(identity.object_id)
            stack.callback(redis.attach(imds))
            self.env.update(
                AZURE_REDIS_URL=redis.url,
                AZURE_REDIS_CA_CERTS=redis.ca_file,
                AZURE_REDIS_USERNAME=site.object_id,
                AZURE_REDIS_POLICY=redis.policy,
            )
            kind = _REDIS_KINDS[redis.policy]
            self.lines.append(f"Redis (TLS, ACL users)    {redis.url}   {kind}")
        if "storage" in self.services:
            from .azurite import AzuriteStandIn

            azurite = stack.enter_context(AzuriteStandIn())
            azurite.create_container(CONTAINER, imds)  # the container the variables name
            cas.append(azurite.ca_file)
            self.env.update(
                AZURE_STORAGE_ACCOUNT_URL=azurite.account_url,
                AZURE_STORAGE_CONTAINER=CONTAINER,
                AZURE_STORAGE_CA_BUNDLE=azurite.ca_file,
            )
            self.lines.append(f"Blob Storage (Azurite)    {azurite.account_url}   container {CONTAINER!r}")
        if "keyvault" in self.services:
            from .keyvault import KeyVaultStandIn

            vault = stack.enter_context(KeyVaultStandIn())
            stack.callback(vault.attach(imds))
            for identity in identities:
                vault.grant(identity.object_id)
            vault.set_secret("django-secret-key", secrets.token_urlsafe(50))
            cas.append(vault.ca_file)
            self.env["AZURE_KEY_VAULT_URL"] = vault.url
            self.lines.append(f"Key Vault                 {vault.url}   secret 'django-secret-key'")
        self.env["DJANGO_AZURE_MI_STAND_INS"] = "1"  # settings.py switches on it (testing.settings)
        if cas:
            workdir = tempfile.mkdtemp(prefix="django-azure-mi-local-")
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
            bundle = Path(workdir) / "ca-bundle.pem"
            bundle.write_text("".join(Path(ca).read_text() for ca in cas))
            self.env["REQUESTS_CA_BUNDLE"] = str(bundle)

    def exports(self) -> str:
        """``unset``/``export`` lines for a POSIX shell (``eval "$(python -m django_azure_mi.testing)"``)."""
        lines = [f"unset {name}" for name in self.unset]
        lines += [f"export {name}={shlex.quote(value)}" for name, value in self.env.items()]
        return "\n".join(lines) + "\n"

    def dotenv(self) -> str:
        """``NAME='value'`` lines that python-dotenv, django-environ, docker's ``--env-file`` and a shell
        (``set -a; . FILE``) all read; the variables to unset are comments (a .env file can't unset)."""
        lines = [f"# {name} must not be set (it would send azure-identity elsewhere)" for name in self.unset]
        lines += [f"{name}={shlex.quote(value)}" for name, value in self.env.items()]
        return "\n".join(lines) + "\n"

    def apply(self) -> None:
        """Set the variables in this process's environment."""
        for name in self.unset:
            os.environ.pop(name, None)
        os.environ.update(self.env)
