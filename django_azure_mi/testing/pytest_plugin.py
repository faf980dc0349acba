"""pytest fixtures for apps using django-azure-mi (loaded automatically through the ``pytest11`` entry point).

``azure_storage``: Azurite with OAuth over HTTPS, checking the tokens ``azure_imds`` issues.

``azure_redis``: redis-server with ACLs behind an enforcer that closes connections whose token expired.

``azure_postgres``: a token-checking Postgres (TLS, Azure's token checks) against ``azure_imds``'s tokens.

``azure_mysql``: a token-checking MySQL (MariaDB behind Azure's sign-in, :mod:`.mysql`) against
``azure_imds``'s tokens; skips the test, saying why, where MariaDB's server is not installed.

``azure_databases``: points Django's ``DATABASES`` (and its open connections) at ``azure_postgres`` for the
test, with database access allowed: ``connections = azure_databases()``.

``azure_test_databases`` (session, opt-in through ``django_db_modify_db_settings``): pytest-django's test
databases on ``azure_postgres``'s server, so that ``django_db`` tests run there.

``azure_imds``: an :class:`~django_azure_mi.testing.imds.IMDSEmulator` started for the test, with the
environment pointing the real azure-identity at it and django-azure-mi's process state reset before and
after. Configure it with a marker::

    @pytest.mark.azure_imds(ttl=60, mode="app_service")
    def test_something(azure_imds): ...
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

if TYPE_CHECKING:
    from .azurite import AzuriteStandIn
    from .imds import IMDSEmulator
    from .keyvault import KeyVaultStandIn
    from .mysql import MySQLStandIn
    from .postgres import PostgresStandIn
    from .redis import RedisStandIn
    from .rediscluster import RedisClusterStandIn
    from .redisenterprise import RedisEnterpriseStandIn


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("django-azure-mi").addoption(
        "--azure-redis-policy",
        default="single",
        choices=("single", "none", "oss", "enterprise"),
        help="what the azure_redis fixture is: Azure Cache for Redis ('single', the default) or Azure "
        "Managed Redis with the Non-clustered ('none'), OSS ('oss') or Enterprise ('enterprise') policy",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "azure_imds(**kwargs): options for the azure_imds fixture's IMDSEmulator (ttl, mode, ...)"
    )


_SESSION_IMDS = pytest.StashKey["IMDSEmulator"]()


@pytest.fixture
def azure_imds(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[IMDSEmulator]:
    from . import reset_state
    from .imds import IMDSEmulator

    marker = request.node.get_closest_marker("azure_imds")
    options = dict(marker.kwargs) if marker else {}
    reset_state()
    with IMDSEmulator(**options) as emulator:
        session = request.config.stash.get(_SESSION_IMDS, None)
        if session is not None and "tenant_id" not in options:  # the same VM: the same identities
            emulator.adopt(session)
        _point_azure_identity_at(emulator, monkeypatch)
        try:
            yield emulator
        finally:
            reset_state()


def _point_azure_identity_at(emulator: IMDSEmulator, patch: pytest.MonkeyPatch) -> None:
    """The environment that sends the real azure-identity to ``emulator`` (undone with ``patch``)."""
    for name, value in emulator.environ().items():
        if value is None:
            patch.delenv(name, raising=False)
        else:
            patch.setenv(name, value)


@pytest.fixture(scope="session")
def azure_session_imds(request: pytest.FixtureRequest) -> Iterator[IMDSEmulator]:
    """An IMDS emulator for the whole session (or xdist worker), with the environment pointing the real
    azure-identity at it, for session-wide fixtures such as ``azure_test_databases``. A test's ``azure_imds``
    takes over for that test, speaking for the same identities (same object ids and tenant)."""
    from . import reset_state
    from .imds import IMDSEmulator

    with IMDSEmulator() as emulator, pytest.MonkeyPatch.context() as patch:
        _point_azure_identity_at(emulator, patch)
        reset_state()
        request.config.stash[_SESSION_IMDS] = emulator
        try:
            yield emulator
        finally:
            del request.config.stash[_SESSION_IMDS]
            reset_state()


@pytest.fixture(scope="session")
def azure_postgres_server() -> Iterator[PostgresStandIn]:
    """One token-checking Postgres cluster for the test session (see ``azure_postgres``)."""
    from .postgres import PostgresStandIn

    with PostgresStandIn() as server:
        server.add_role("app-identity")
        yield server


@pytest.fixture
def azure_postgres(
    azure_postgres_server: PostgresStandIn, azure_imds: IMDSEmulator
) -> Iterator[PostgresStandIn]:
    """The session's token-checking Postgres, checking tokens against this test's ``azure_imds``: the role
    ``app-identity`` (system-assigned identity) signs in with any unexpired token issued to that identity for
    the Postgres scope, as on Azure. ``azure_postgres.add_role(name, client_id=...)`` adds user-assigned
    identities."""
    server = azure_postgres_server
    server.reset_passwords()
    detach = server.attach(azure_imds)
    try:
        yield server
    finally:
        detach()
        server.reset_passwords()
        server.terminate_sessions(dbname=server.dbname)  # not the session's test databases


def reset_connections() -> None:
    """Close Django's connections (and pools) and forget them, so that the next use reads DATABASES again
    (pytest-django's ``settings`` fixture changes the setting, not the connections already made)."""
    from asgiref.local import Local
    from django.db import connections

    for alias in list(connections.settings):
        conn = connections[alias]
        if hasattr(conn, "close_pool") and conn.alias in getattr(conn, "_connection_pools", {}):
            conn.close_pool()
        conn.close()
    connections.__dict__.pop("settings", None)
    connections._settings = None  # type: ignore[attr-defined]  # BaseConnectionHandler's own state
    connections._connections = Local(connections.thread_critical)  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def azure_mysql_server() -> Iterator[MySQLStandIn]:
    """One token-checking MySQL for the test session (see ``azure_mysql``)."""
    from .base import Missing
    from .mysql import MySQLStandIn

    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(MySQLStandIn())
        except Missing as exc:
            pytest.skip(str(exc))
        server.add_user("app-identity")
        yield server


@pytest.fixture
def azure_mysql(azure_mysql_server: MySQLStandIn, azure_imds: IMDSEmulator) -> Iterator[MySQLStandIn]:
    """The session's token-checking MySQL, checking tokens against this test's ``azure_imds``: the user
    ``app-identity`` (system-assigned identity) signs in with any unexpired token of that identity, as on
    Azure. ``azure_databases(default=azure_mysql.database_settings("app-identity"))`` points Django at it;
    ``azure_mysql.add_user(name, client_id=...)`` adds user-assigned identities."""
    detach = azure_mysql_server.attach(azure_imds)
    try:
        yield azure_mysql_server
    finally:
        detach()


@pytest.fixture
def azure_databases(
    azure_postgres: PostgresStandIn, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Any]]:
    """``azure_databases(**aliases)`` points ``settings.DATABASES`` at the stand-in Postgres for this test and
    returns Django's ``connections``: each alias maps to a role name or a full settings dict; no argument:
    ``default`` as ``app-identity``. Database access is allowed for the test (no ``django_db`` mark needed;
    with one, pytest-django's own test database would be used instead). The stand-in's database is not
    rolled back between tests: create what a test needs, or migrate once per session."""

    from django.db import connections
    from django.test import override_settings

    if request.node.get_closest_marker("django_db") is not None:
        raise pytest.UsageError(
            "azure_databases allows database access itself and points DATABASES at the stand-in's own "
            "database: drop @pytest.mark.django_db from this test, or, for django_db tests on the stand-in, "
            "opt in to azure_test_databases (django-azure-mi's docs: 'Testing your app')"
        )
    blocker = request.getfixturevalue("django_db_blocker") if _has_pytest_django() else None
    unblocked = blocker.unblock() if blocker is not None else contextlib.nullcontext()
    overrides: list[override_settings] = []

    def configure(**aliases: Any) -> Any:
        aliases = aliases or {"default": "app-identity"}
        databases = {
            alias: azure_postgres.database_settings(entry) if isinstance(entry, str) else entry
            for alias, entry in aliases.items()
        }
        overrides.append(_override_databases(databases))
        return connections

    with unblocked:
        try:
            yield configure
        finally:
            _restore_databases(overrides)


@pytest.fixture(scope="session")
def azure_test_databases(
    request: pytest.FixtureRequest, azure_postgres_server: PostgresStandIn, azure_session_imds: IMDSEmulator
) -> Iterator[PostgresStandIn]:
    """Opt in from your conftest.py so that pytest-django creates its test databases on the token-checking
    Postgres and every ``django_db`` test runs there::

        @pytest.fixture(scope="session")
        def django_db_modify_db_settings(azure_test_databases):
            pass

    Every alias of ``DATABASES`` is pointed at the stand-in for the session, signing in as the role
    ``app-identity`` with tokens from ``azure_session_imds``; pytest-django's own options (``--reuse-db``,
    ``--create-db``, ``--no-migrations``, the xdist suffix) still apply. Returns the stand-in."""

    from django.conf import settings

    server = azure_postgres_server
    detach = server.attach(azure_session_imds)
    entry = server.database_settings("app-identity")
    aliases = list(settings.DATABASES) or ["default"]
    override = _override_databases({alias: dict(entry) for alias in aliases})
    try:
        if _has_pytest_django():  # the suffix for xdist workers and tox, after our settings are in
            request.getfixturevalue("django_db_modify_db_settings_parallel_suffix")
        yield server
    finally:
        _restore_databases([override])
        detach()


def _override_databases(databases: dict[str, Any]) -> Any:
    """``DATABASES`` overridden (a ``django.test.override_settings``, enabled), with Django's connections
    reset before and after so that the next query uses the new settings."""
    import warnings

    from django.test import override_settings

    reset_connections()
    override = override_settings(DATABASES=databases)
    with warnings.catch_warnings():  # "Overriding setting DATABASES": the connections are reset here
        warnings.simplefilter("ignore", UserWarning)
        override.enable()
    reset_connections()
    return override


def _restore_databases(overrides: list[Any]) -> None:
    """Undo :func:`_override_databases` (latest first), resetting the connections around it."""
    import warnings

    reset_connections()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for override in reversed(overrides):
            override.disable()
    reset_connections()


def _has_pytest_django() -> bool:
    try:
        import pytest_django  # noqa: F401
    except ImportError:
        return False
    return True


R = TypeVar("R", bound="RedisStandIn")


@contextlib.contextmanager
def _enforcing(server: R, imds: IMDSEmulator) -> Iterator[R]:
    """A session's Redis stand-in (any policy) for one test: emptied, the system-assigned identity a user,
    following this test's identity endpoint; emptied again after."""
    server.reset()
    server.add_identity(imds.object_id())
    detach = server.attach(imds)
    try:
        yield server
    finally:
        detach()
        server.reset()


@pytest.fixture(scope="session")
def azure_redis_server(request: pytest.FixtureRequest) -> Iterator[RedisStandIn]:
    """One token-checking Redis (with its enforcer) for the test session (see ``azure_redis``): Azure Cache
    for Redis, or the Azure Managed Redis policy that ``--azure-redis-policy`` names."""
    from .redis import redis_stand_in

    with redis_stand_in(request.config.getoption("--azure-redis-policy", "single")) as server:
        yield server


@pytest.fixture
def azure_redis(azure_redis_server: RedisStandIn, azure_imds: IMDSEmulator) -> Iterator[RedisStandIn]:
    """The session's token-checking Redis, following this test's ``azure_imds``: the system-assigned
    identity's object id is a user whose passwords are the unexpired Redis-scope tokens issued to it.
    ``azure_redis.url`` (rediss://) and ``azure_redis.ca_file`` configure clients; ``closed_connections``
    counts the connections the enforcer closed because their token expired."""
    with _enforcing(azure_redis_server, azure_imds) as server:
        yield server


@pytest.fixture(scope="session")
def azure_redis_nonclustered_server() -> Iterator[RedisStandIn]:
    """One Azure Managed Redis with the Non-clustered policy for the test session (see
    ``azure_redis_nonclustered``)."""
    from .redis import redis_stand_in

    with redis_stand_in("none") as server:
        yield server


@pytest.fixture
def azure_redis_nonclustered(
    azure_redis_nonclustered_server: RedisStandIn, azure_imds: IMDSEmulator
) -> Iterator[RedisStandIn]:
    """``azure_redis`` on Azure Managed Redis's Non-clustered policy: one endpoint, database 0 only."""
    with _enforcing(azure_redis_nonclustered_server, azure_imds) as server:
        yield server


@pytest.fixture(scope="session")
def azure_redis_cluster_server() -> Iterator[RedisClusterStandIn]:
    """One Azure Managed Redis with the OSS clustering policy for the test session (see
    ``azure_redis_cluster``)."""
    from .rediscluster import RedisClusterStandIn

    with RedisClusterStandIn() as server:
        yield server


@pytest.fixture
def azure_redis_cluster(
    azure_redis_cluster_server: RedisClusterStandIn, azure_imds: IMDSEmulator
) -> Iterator[RedisClusterStandIn]:
    """``azure_redis`` on the OSS clustering policy: three shards and an entry node (``url``) that owns no
    slots, every node enforcing the tokens of this test's ``azure_imds``; ``move_slot()`` changes the
    topology."""
    with _enforcing(azure_redis_cluster_server, azure_imds) as server:
        yield server


@pytest.fixture(scope="session")
def azure_redis_enterprise_server() -> Iterator[RedisEnterpriseStandIn]:
    """One Azure Managed Redis with the Enterprise clustering policy for the test session (see
    ``azure_redis_enterprise``)."""
    from .redisenterprise import RedisEnterpriseStandIn

    with RedisEnterpriseStandIn() as server:
        yield server


@pytest.fixture
def azure_redis_enterprise(
    azure_redis_enterprise_server: RedisEnterpriseStandIn, azure_imds: IMDSEmulator
) -> Iterator[RedisEnterpriseStandIn]:
    """``azure_redis`` on the Enterprise clustering policy: one endpoint, the slot rules of a sharded
    database (CROSSSLOT for transactions over several slots), ``CLUSTER`` refused."""
    with _enforcing(azure_redis_enterprise_server, azure_imds) as server:
        yield server


@pytest.fixture(scope="session")
def azure_storage_server() -> Iterator[AzuriteStandIn]:
    """One Azurite (OAuth, HTTPS) for the test session (see ``azure_storage``)."""
    from .azurite import AzuriteStandIn

    with AzuriteStandIn() as server:
        yield server


@pytest.fixture
def azure_storage(azure_storage_server: AzuriteStandIn, azure_imds: IMDSEmulator) -> AzuriteStandIn:
    """Azurite accepting this test's ``azure_imds`` tokens. ``azure_storage.storage_options(container)`` gives
    ``STORAGES[...]["OPTIONS"]`` for AzureManagedIdentityStorage (the container must exist: create it with
    ``storage.client.create_container()``)."""
    return azure_storage_server


@pytest.fixture(scope="session")
def azure_keyvault_server() -> Iterator[KeyVaultStandIn]:
    """One Key Vault stand-in (HTTPS) for the test session (see ``azure_keyvault``)."""
    from .keyvault import KeyVaultStandIn

    with KeyVaultStandIn() as server:
        yield server


@pytest.fixture
def azure_keyvault(
    azure_keyvault_server: KeyVaultStandIn, azure_imds: IMDSEmulator, monkeypatch: pytest.MonkeyPatch
) -> Iterator[KeyVaultStandIn]:
    """The session's Key Vault stand-in, accepting this test's ``azure_imds`` vault tokens, with the
    system-assigned identity granted read access and ``AZURE_KEY_VAULT_URL`` pointing at it (and
    ``REQUESTS_CA_BUNDLE`` at its CA). Add secrets with ``azure_keyvault.set_secret(name, value)``."""
    server = azure_keyvault_server
    server.reset()
    try:  # the SDK remembers each vault's challenge (and tenant) process-wide; each test has a new tenant
        from azure.keyvault.secrets._shared import http_challenge_cache

        http_challenge_cache.clear()
    except ImportError:  # pragma: no cover - a future SDK layout
        pass
    detach = server.attach(azure_imds)
    server.grant(azure_imds.object_id())
    monkeypatch.setenv("AZURE_KEY_VAULT_URL", server.url)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", server.ca_file)
    try:
        yield server
    finally:
        detach()
        server.reset()
