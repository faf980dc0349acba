"""No silent acceptance: the bad-configuration matrix.

Every case is a setting a careless user (or a copy-paste from another library's docs) could write. Each
must end in a system-check error that names the setting (with its alias) and the fix, or a warning that
explains the risk; ``manage.py check`` must never die with a traceback. The counts are printed by
``test_matrix_counts`` (``pytest -s``) and quoted in docs/checks.md.
"""

from __future__ import annotations

import io
import os
from typing import Any

import pytest
from asgiref.local import Local
from django.core.cache import caches
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from django_azure_mi.checks import check_settings
from django_azure_mi.testing import reset_state

from .conftest import CLIENT_ID

OID = "6f1c1d3e-9a52-4c47-9a50-1f0c8f0c2b11"
ENGINE = "django_azure_mi.backends.postgresql"
FACTORY = "django_azure_mi.cache.EntraConnectionFactory"
AZURE_PG = "srv.postgres.database.azure.com"
AZURE_REDIS = "rediss://cache.redis.cache.windows.net:6380/0"
AMR = "rediss://app.westeurope.redis.azure.net:10000"  # Azure Managed Redis (no database path)
PG = {"ENGINE": ENGINE, "HOST": AZURE_PG, "NAME": "app", "USER": "my-app"}
MY = {"ENGINE": "django_azure_mi.backends.mysql", "HOST": "mysite-db.mysql.database.azure.com"}
try:
    import MySQLdb

    PYMYSQL = MySQLdb.__name__ == "pymysql"  # pymysql.install_as_MySQLdb()
except ImportError:
    PYMYSQL = True
MY_TLS_OFF: dict[str, Any] = {"ssl_disabled": True} if PYMYSQL else {"ssl_mode": "DISABLED"}
MY_NAME_UNCHECKED: dict[str, Any] = {"ssl_verify_identity": False} if PYMYSQL else {"ssl_mode": "VERIFY_CA"}
REDIS = {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": AZURE_REDIS,
         "OPTIONS": {"CONNECTION_FACTORY": FACTORY, "MANAGED_IDENTITY": {"USERNAME": OID}}}  # fmt: skip
BUILTIN = {"BACKEND": "django_azure_mi.cache.RedisCache", "LOCATION": AZURE_REDIS, "OPTIONS": {}}
STORAGE = {"BACKEND": "django_azure_mi.storage.AzureManagedIdentityStorage",
           "OPTIONS": {"account_name": "acct", "azure_container": "media",
                       "expiration_secs": 3600}}  # fmt: skip
STATIC = {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}
ALIAS = "sessions"  # not "default": messages must name the alias in question


def mi(**values: Any) -> dict[str, Any]:
    return {"AZURE_MANAGED_IDENTITY": values}


def db(options: dict[str, Any] | None = None, **entry: Any) -> dict[str, Any]:
    return {"DATABASES": {"default": {**PG, **entry, "OPTIONS": options or {}}}}


def cache(
    options: dict[str, Any] | None = None, base: dict[str, Any] = REDIS, **entry: Any
) -> dict[str, Any]:
    merged = {**base, **entry, "OPTIONS": {**base["OPTIONS"], **(options or {})}}
    return {
        "CACHES": {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}, ALIAS: merged}
    }


def identity(**values: Any) -> dict[str, Any]:
    return cache({"MANAGED_IDENTITY": {"USERNAME": OID, **values}})


def storage(**options: Any) -> dict[str, Any]:
    entry = {**STORAGE, "OPTIONS": {**STORAGE["OPTIONS"], **options}}
    return {"STORAGES": {"default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
                         "media": entry, "staticfiles": STATIC}}  # fmt: skip


class Env(dict[str, str]):
    """Environment variables a case sets (on top of its settings)."""


LAYER = "django_azure_mi.channels.RedisChannelLayer"


def layer(**config: Any) -> dict[str, Any]:
    return {"CHANNEL_LAYERS": {ALIAS: {"BACKEND": LAYER, "CONFIG": {"hosts": [AZURE_REDIS], **config}}}}


def env(settings: dict[str, Any] | None = None, **variables: str) -> dict[str, Any]:
    return {**(settings or {}), "_env": Env(variables)}


NOT_A_DIR = os.path.abspath(__file__)

# (label, settings, expected check id). Grouped by service; the first group is AZURE_MANAGED_IDENTITY.
CASES: list[tuple[str, dict[str, Any], str]] = [
    ("setting is None", {"AZURE_MANAGED_IDENTITY": None}, "E001"),
    ("setting is a string", {"AZURE_MANAGED_IDENTITY": "managed_identity"}, "E001"),
    ("setting is True", {"AZURE_MANAGED_IDENTITY": True}, "E001"),
    ("unknown cloud", mi(CLOUD="mars"), "E001"),
    ("misspelt key", mi(REFRESH_MARGN=300), "E001"),
    ("lower-case key", mi(client_id=CLIENT_ID), "E001"),
    ("negative margin", mi(REFRESH_MARGIN=-1), "E001"),
    ("margin as text", mi(REFRESH_MARGIN="300"), "E001"),
    ("margin as bool", mi(REFRESH_MARGIN=True), "E001"),
    ("margin over 12 h", mi(REFRESH_MARGIN=86400), "E001"),
    ("zero timeout", mi(TIMEOUT=0), "E001"),
    ("timeout over 10 min", mi(TIMEOUT=601), "E001"),
    ("timeout as text", mi(TIMEOUT="15"), "E001"),
    ("unknown credential kind", mi(CREDENTIAL="msi"), "E001"),
    ("credential not a string", mi(CREDENTIAL=42), "E001"),
    ("empty cache dir", mi(TOKEN_CACHE_DIR=""), "E001"),
    ("cache dir not a path", mi(TOKEN_CACHE_DIR=5), "E001"),
    ("cache dir is a file", mi(TOKEN_CACHE_DIR=NOT_A_DIR), "E007"),
    ("cache dir readable by others", mi(TOKEN_CACHE_DIR="{shared_dir}"), "E007"),
    ("cache dir under a parent others can write", mi(TOKEN_CACHE_DIR="{shared_dir}/tokens"), "E007"),
    ("client id not a GUID", mi(CLIENT_ID="my-identity"), "E002"),
    ("client id a number", mi(CLIENT_ID=123), "E002"),
    ("AZURE_CLIENT_ID not a GUID", env(AZURE_CLIENT_ID="my-identity"), "E002"),
    ("credential path missing", mi(CREDENTIAL="no_such_module.make"), "E003"),
    ("credential path not callable", mi(CREDENTIAL="os.sep"), "E003"),
    ("workload identity without its env", mi(CREDENTIAL="workload_identity"), "E004"),
    # DATABASES
    ("db scope not a URL", db({"managed_identity": {"scope": "ossrdbms"}}), "E005"),
    ("db option misspelt", db({"managed_identity": {"clientid": CLIENT_ID}}), "E010"),
    ("db option not a dict", db({"managed_identity": "yes"}), "E010"),
    ("db enabled not a bool", db({"managed_identity": {"enabled": "yes"}}), "E010"),
    ("db verify_tls not a bool", db({"managed_identity": {"verify_tls": "no"}}), "E010"),
    ("db client id not a GUID", db({"managed_identity": {"client_id": "x"}}), "E002"),
    ("db PASSWORD", db(PASSWORD="hunter2"), "E011"),
    ("db OPTIONS password", db({"password": "hunter2"}), "E011"),
    ("db USER empty", db(USER=""), "E012"),
    ("sslmode disable", db({"sslmode": "disable"}), "E013"),
    ("sslmode DISABLE", db({"sslmode": "DISABLE"}), "E013"),
    ("sslmode allow", db({"sslmode": "allow"}), "E013"),
    ("sslmode prefer", db({"sslmode": "prefer"}), "E013"),
    ("sslmode require", db({"sslmode": "require"}), "E013"),
    ("sslmode verify-ca", db({"sslmode": "verify-ca"}), "E013"),
    ("sslmode unknown", db({"sslmode": "strict"}), "E013"),
    ("OPTIONS host, empty HOST", db({"host": AZURE_PG, "sslmode": "prefer"}, HOST=""), "E013"),
    ("OPTIONS hostaddr", db({"hostaddr": "10.0.0.5", "sslmode": "require"}, HOST="localhost"), "E013"),
    ("multi-host HOST", db({"sslmode": "prefer"}, HOST=f"localhost,{AZURE_PG}"), "E013"),
    ("service file target", db({"service": "prod", "sslmode": "prefer"}, HOST=""), "E013"),
    ("PGSSLMODE=require", env(db(), PGSSLMODE="require"), "E013"),
    ("PGHOST with prefer", env(db({"sslmode": "prefer"}, HOST=""), PGHOST=AZURE_PG), "E013"),
    ("db verify_tls=False", db({"sslmode": "require", "managed_identity": {"verify_tls": False}}), "W011"),
    (
        "db scope of storage",
        db({"managed_identity": {"scope": "https://storage.azure.com/.default"}}),
        "W005",
    ),
    ("stock ENGINE to Azure", db(ENGINE="django.db.backends.postgresql"), "W010"),
    # DATABASES on MySQL (PyMySQL as MySQLdb, conftest.py; or mysqlclient: tox -e mysqlclient). The TLS
    # options are the driver's own.
    ("mysql option misspelt", db({"managed_identity": {"clientid": CLIENT_ID}}, **MY), "E070"),
    ("mysql password", db(**MY, PASSWORD="hunter2"), "E071"),
    ("mysql passwd option", db({"passwd": "hunter2"}, **MY), "E071"),
    ("mysql no user", db(**{**MY, "USER": ""}), "E072"),
    ("mysql TLS off", db(MY_TLS_OFF, **MY), "E073"),
    ("mysql name unchecked", db(MY_NAME_UNCHECKED, **MY), "E073"),
    (
        "mysql unverified opt-out",
        db({**MY_NAME_UNCHECKED, "managed_identity": {"verify_tls": False}}, **MY),
        "W071",
    ),
    ("stock MySQL ENGINE to Azure", db(**{**MY, "ENGINE": "django.db.backends.mysql"}), "W070"),
    # CACHES
    ("cache option misspelt", cache({"MANAGED_IDENTITY": {"USER": OID}}), "E020"),
    ("cache option True", cache({"MANAGED_IDENTITY": True}), "E020"),
    ("cache option lower case", cache({"MANAGED_IDENTITY": {"username": OID}}), "E020"),
    ("cache VERIFY_TLS not a bool", identity(VERIFY_TLS="no"), "E020"),
    ("cache scope not a URL", identity(SCOPE="redis"), "E005"),
    ("cache client id not a GUID", identity(CLIENT_ID="x"), "E002"),
    ("credentials in LOCATION", cache(LOCATION="rediss://u:pw@cache.redis.cache.windows.net:6380/0"), "E021"),
    ("PASSWORD option", cache({"PASSWORD": "key"}), "E021"),
    ("USERNAME option", cache({"USERNAME": "default"}), "E021"),
    ("builtin password", cache({"password": "key"}, base=BUILTIN), "E021"),
    ("builtin username", cache({"username": "default"}, base=BUILTIN), "E021"),
    ("redis:// remote", cache(LOCATION="redis://cache.redis.cache.windows.net:6379/0"), "E022"),
    (
        "builtin redis://",
        cache(base=BUILTIN, LOCATION="redis://cache.redis.cache.windows.net:6379/0"),
        "E022",
    ),
    (
        "one of two LOCATIONs plain",
        cache(base=BUILTIN, LOCATION=f"{AZURE_REDIS},redis://replica.redis.cache.windows.net:6379/0"),
        "E022",
    ),
    (
        "plain connection_class on rediss",
        cache({"CONNECTION_POOL_KWARGS": {"connection_class": "redis.Connection"}}),
        "E022",
    ),
    ("builtin plain connection_class", cache({"connection_class": "redis.Connection"}, base=BUILTIN), "E022"),
    ("ssl_cert_reqs none", cache({"CONNECTION_POOL_KWARGS": {"ssl_cert_reqs": "none"}}), "E022"),
    ("builtin ssl_check_hostname False", cache({"ssl_check_hostname": False}, base=BUILTIN), "E022"),
    ("builtin ssl_check_hostname None", cache({"ssl_check_hostname": None}, base=BUILTIN), "E022"),
    ("ssl_check_hostname empty", cache({"CONNECTION_POOL_KWARGS": {"ssl_check_hostname": ""}}), "E022"),
    ("ssl_cert_reqs optional", cache({"CONNECTION_POOL_KWARGS": {"ssl_cert_reqs": "optional"}}), "E022"),
    ("ssl_cert_reqs=none in the URL", cache(LOCATION=f"{AZURE_REDIS}?ssl_cert_reqs=none"), "E022"),
    ("CLUSTER not a switch", cache({"CLUSTER": "yes"}), "E026"),
    ("builtin cluster 1", cache({"cluster": 1}, base=BUILTIN), "E026"),
    ("blocking pool", cache({"CONNECTION_POOL_CLASS": "redis.BlockingConnectionPool"}), "E023"),
    ("builtin blocking pool", cache({"pool_class": "redis.BlockingConnectionPool"}, base=BUILTIN), "E023"),
    (
        "identity without the factory",
        cache({"CONNECTION_FACTORY": "django_redis.pool.ConnectionFactory"}),
        "E024",
    ),
    ("USERNAME not an object id", identity(USERNAME="my-app"), "W020"),
    (
        "cache VERIFY_TLS=False",
        cache(
            {"MANAGED_IDENTITY": {"VERIFY_TLS": False}, "CONNECTION_POOL_KWARGS": {"ssl_cert_reqs": "none"}}
        ),
        "W022",
    ),
    ("cache scope of Key Vault", identity(SCOPE="https://vault.azure.net/.default"), "W005"),
    (
        "stock backend to Azure Redis",
        cache(
            base={
                "BACKEND": "django.core.cache.backends.redis.RedisCache",
                "LOCATION": AZURE_REDIS,
                "OPTIONS": {},
            }
        ),
        "W021",
    ),
    # Azure Managed Redis: database 0 only; django-redis's DefaultClient runs MULTI across slots
    (
        "AMR database 1",
        cache({"CLIENT_CLASS": "django_azure_mi.cache.EntraClient"}, LOCATION=f"{AMR}/1"),
        "E027",
    ),
    ("AMR db=2 in the query", cache(LOCATION=f"{AMR}?db=2", base=BUILTIN), "E027"),
    ("AMR with DefaultClient", cache(LOCATION=f"{AMR}/0"), "W023"),
    (
        "Celery results on AMR database 1",
        {"CELERY_RESULT_BACKEND": f"django_azure_mi.celery.backend:RedisBackend+{AMR}/1"},
        "E027",
    ),
    # Celery on a sharded Redis (Azure Managed Redis): its keys under one hash tag
    (
        "Celery prefix without a hash tag",
        {
            "CELERY_BROKER_URL": "rediss://app.westeurope.redis.azure.net:10000/0",
            "CELERY_BROKER_TRANSPORT": "django_azure_mi.celery.transport:Transport",
            "CELERY_BROKER_TRANSPORT_OPTIONS": {"global_keyprefix": "celery:"},
        },
        "E052",
    ),
    (
        "Celery results cluster not a switch",
        {
            "CELERY_RESULT_BACKEND": "django_azure_mi.celery.backend:RedisBackend+rediss://cache.example.net/0",
            "CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS": {"cluster": "yes"},
        },
        "E026",
    ),
    # CHANNEL_LAYERS (Django Channels)
    ("layer Sentinels", layer(hosts=[{"master_name": "m", "sentinels": [("s", 26379)]}]), "E060"),
    ("layer hosts a string", layer(hosts=AZURE_REDIS), "E060"),
    ("layer CONFIG not a dict", {"CHANNEL_LAYERS": {ALIAS: {"BACKEND": LAYER, "CONFIG": ["x"]}}}, "E060"),
    ("layer password", layer(hosts=[{"address": AZURE_REDIS, "password": "hunter2"}]), "E021"),
    ("layer no TLS", layer(hosts=["redis://cache.redis.cache.windows.net:6379/0"]), "E022"),
    ("layer option misspelt", layer(MANAGED_IDENTITY={"USER": OID}), "E020"),
    ("layer database on AMR", layer(hosts=[f"{AMR}/3"]), "E027"),
    ("layer prefix without a hash tag on AMR", layer(hosts=[f"{AMR}/0"], prefix="asgi"), "E061"),
    (
        "layer read timeout within its receive's block",
        layer(hosts=[{"address": AZURE_REDIS, "socket_timeout": 5}]),
        "E062",
    ),
    # STORAGES
    ("account_key", storage(account_key="a2V5"), "E030"),
    ("sas_token", storage(sas_token="sv=2024&sig=x"), "E030"),
    ("connection_string", storage(connection_string="DefaultEndpointsProtocol=https;AccountName=a"), "E030"),
    ("token_credential", storage(token_credential="azure.identity.DefaultAzureCredential"), "E030"),
    ("storage option misspelt", storage(managed_identity={"clientid": CLIENT_ID}), "E031"),
    ("storage option not a dict", storage(managed_identity="x"), "E031"),
    ("storage verify_tls not a bool", storage(managed_identity={"verify_tls": "no"}), "E031"),
    ("storage scope not a URL", storage(managed_identity={"scope": "storage"}), "E005"),
    ("http account_url", storage(account_url="http://acct.blob.core.windows.net"), "E032"),
    ("azure_ssl False", storage(azure_ssl=False), "E032"),
    ("connection_verify False", storage(client_options={"connection_verify": False}), "E032"),
    ("connection_verify 0", storage(client_options={"connection_verify": 0}), "E032"),
    ("connection_verify empty", storage(client_options={"connection_verify": ""}), "E032"),
    ("no account", storage(account_name=None), "E033"),
    ("account_name is a URL", storage(account_name="http://acct"), "E033"),
    ("account_name with capitals", storage(account_name="My_Account"), "E033"),
    (
        "account_url without an account",
        storage(account_name=None, account_url="https://10.0.0.5:10000"),
        "E033",
    ),
    ("negative expiration", storage(expiration_secs=-1), "E034"),
    ("expiration as text", storage(expiration_secs="3600"), "E034"),
    ("expiration beyond the key", storage(expiration_secs=8 * 86400), "E034"),
    ("custom_domain over http", storage(custom_domain="http://cdn.example.com"), "E035"),
    ("custom_domain with a scheme", storage(custom_domain="https://cdn.example.com"), "E035"),
    ("custom_domain with a path", storage(custom_domain="cdn.example.com/media"), "E035"),
    ("no container", storage(azure_container=None), "E036"),
    (
        "storage verify_tls=False",
        storage(client_options={"connection_verify": False}, managed_identity={"verify_tls": False}),
        "W032",
    ),
    (
        "storage scope of Postgres",
        storage(managed_identity={"scope": "https://ossrdbms-aad.database.windows.net/.default"}),
        "W005",
    ),
    # Key Vault
    ("vault over http", env(AZURE_KEY_VAULT_URL="http://my-vault.vault.azure.net"), "E040"),
    ("vault name, not URL", env(AZURE_KEY_VAULT_URL="my-vault"), "E040"),
]

# Where each case's message must point: the setting with its alias (cache and storage cases use ALIAS).
WHERE = {
    "DATABASES": "DATABASES['default']",
    "CACHES": f"CACHES[{ALIAS!r}]",
    "STORAGES": "STORAGES['media']",
    "CELERY_BROKER_TRANSPORT_OPTIONS": "CELERY_BROKER_TRANSPORT_OPTIONS",
    "CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS": "CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS",
    "CELERY_RESULT_BACKEND": "CELERY_RESULT_BACKEND",
    "CHANNEL_LAYERS": f"CHANNEL_LAYERS[{ALIAS!r}]",
}


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    for name in ("AZURE_KEY_VAULT_URL", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_TENANT_ID", "AZURE_CLIENT_ID",
                 "PGHOST", "PGHOSTADDR", "PGSERVICE", "PGSSLMODE"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    reset_state()
    yield
    reset_state()


def prepared(case: dict[str, Any], monkeypatch, tmp_path) -> dict[str, Any]:
    """The case's settings, with its environment variables set and its shared directory made."""
    settings = dict(case)
    for name, value in settings.pop("_env", {}).items():
        monkeypatch.setenv(name, value)
    raw = settings.get("AZURE_MANAGED_IDENTITY")
    if isinstance(raw, dict) and str(raw.get("TOKEN_CACHE_DIR")).startswith("{shared_dir}"):
        shared = tmp_path / "shared"
        shared.mkdir(parents=True, exist_ok=True)
        shared.chmod(0o777)  # no sticky bit
        where = raw["TOKEN_CACHE_DIR"].replace("{shared_dir}", str(shared))
        settings["AZURE_MANAGED_IDENTITY"] = {**raw, "TOKEN_CACHE_DIR": where}
    return settings


def run_checks(case: dict[str, Any], monkeypatch, tmp_path) -> list[Any]:
    with override_settings(**prepared(case, monkeypatch, tmp_path)):
        reset_state()
        return check_settings()


def outcome(case: dict[str, Any], monkeypatch, tmp_path) -> str:
    """clear / warning / unclear / silent (what the matrix counts)."""
    messages = run_checks(case, monkeypatch, tmp_path)
    if not messages:
        return "silent"
    if any(m.level >= 40 for m in messages):  # ERROR
        return "clear" if all(m.hint for m in messages if m.level >= 40) else "unclear"
    return "warning"


@pytest.mark.parametrize(("label", "case", "expected"), CASES, ids=[c[0] for c in CASES])
def test_each_bad_setting_is_reported_with_the_setting_and_the_fix(
    label, case, expected, monkeypatch, tmp_path
):
    messages = run_checks(case, monkeypatch, tmp_path)
    assert [m.id.split(".")[-1] for m in messages] == [expected], [m.msg for m in messages]
    (message,) = messages
    text = f"{message.msg} {message.hint or ''}"
    setting = next((name for name in WHERE if name in case), None)
    if setting is not None:  # the alias in question is named, in the object and in the message
        assert WHERE[setting] in message.obj, message.obj
        assert WHERE[setting] in message.msg, message.msg
    elif "_env" in case and "AZURE_MANAGED_IDENTITY" not in case:
        assert any(name in text for name in case["_env"]), text
    else:
        assert "AZURE_MANAGED_IDENTITY" in text, text
    if expected.startswith("E"):
        assert message.hint, f"no fix for {label}: {message.msg}"
    assert "hunter2" not in text and "a2V5" not in text  # never the secret it refuses


def test_every_check_id_is_in_the_matrix():
    from django_azure_mi.checkids import by_id

    documented = set(by_id())
    # E006 (an extra not installed), E014 (psycopg-pool < 3.3), E015 (libpq < 16) and E025 (django-redis
    # missing) need a different installation: tests/test_postgres.py and test_transport.py cover them.
    # W007 (a read-only file system) needs a mount namespace: tests/test_processes.py covers it. E000
    # (Django's own error, psycopg2 with a pool) and E016 (database URLs) are in tests/test_postgres.py,
    # E050/E051 (Celery's settings, checked when Celery builds its app) in tests/test_celery.py.
    # (E052, Celery's key prefix on a sharded Redis, is a system check too: in this matrix.)
    # E074 (no CA bundle file on the machine) and E075 (no MySQL driver) need a different machine or
    # installation: tests/test_mysql.py covers E074 by hiding the bundle.
    elsewhere = {"E000", "E006", "E014", "E015", "E016", "E025", "E050", "E051", "W007", "E074", "E075"}
    assert documented - elsewhere <= {expected for _, _, expected in CASES}, documented - elsewhere
    assert {expected for _, _, expected in CASES} <= documented


def test_manage_py_check_never_dies_with_a_traceback(monkeypatch, tmp_path):
    """Every case through the real command: a SystemCheckError (errors) or a clean exit (warnings)."""
    for label, case, expected in CASES:
        with monkeypatch.context() as patch, override_settings(**prepared(case, patch, tmp_path)):
            reset_state()
            try:
                call_command("check", stdout=io.StringIO(), stderr=io.StringIO())
            except SystemCheckError as exc:
                assert expected.startswith("E") and expected in str(exc), label
            else:
                assert expected.startswith("W"), label
            finally:
                # Django's cache checks built every cache; the settings teardown closes them, and a
                # django-redis (6) cache builds its client to close it: drop them unclosed (no connection
                # was opened).
                caches._connections = Local(caches.thread_critical)


def test_matrix_counts(monkeypatch, tmp_path, capsys):
    counts = {"clear": 0, "warning": 0, "unclear": 0, "silent": 0}
    for _label, case, _expected in CASES:
        with monkeypatch.context() as patch:
            counts[outcome(case, patch, tmp_path)] += 1
    with capsys.disabled():
        print(f"\nbad-configuration matrix: {len(CASES)} cases: {counts}")
    assert counts["silent"] == 0 and counts["unclear"] == 0
