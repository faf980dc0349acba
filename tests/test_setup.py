"""``manage.py azure_setup``: what Azure must have for the settings, as a script and as JSON, for each
service alone and together, system- and user-assigned identities, several aliases, each cloud; the script
is valid shell and runs (with stand-in ``az`` and ``psql`` programs that record what they are asked)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

USER_ID = "11111111-2222-3333-4444-555555555555"
OTHER_ID = "99999999-8888-7777-6666-555555555555"
FACTORY = "django_azure_mi.cache.EntraConnectionFactory"
STORAGE = "django_azure_mi.storage.AzureManagedIdentityStorage"
TRANSPORT = "django_azure_mi.celery.transport:Transport"


def database(host="myserver.postgres.database.azure.com", user="my-app-identity", name="app", **extra):
    return {
        "ENGINE": "django_azure_mi.backends.postgresql",
        "HOST": host,
        "NAME": name,
        "USER": user,
        **extra,
    }


def cache(location="rediss://mycache.westeurope.redis.azure.net:10000/0", **identity):
    options = {"CONNECTION_FACTORY": FACTORY, "CLIENT_CLASS": "django_azure_mi.cache.EntraClient"}
    if identity:
        options["MANAGED_IDENTITY"] = identity
    return {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": location, "OPTIONS": options}


def storage(**options):
    base = {"account_name": "myaccount", "azure_container": "media"}
    return {"BACKEND": STORAGE, "OPTIONS": {**base, **options}}


@pytest.fixture
def site(settings, monkeypatch):
    """``site(**settings)``: only these services configured (no Key Vault unless given)."""
    monkeypatch.delenv("AZURE_KEY_VAULT_URL", raising=False)
    monkeypatch.delenv("AZURE_CLIENT_ID", raising=False)

    def configure(**values):
        settings.DATABASES = values.pop("DATABASES", {})
        settings.CACHES = values.pop(
            "CACHES", {"default": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"}}
        )
        settings.STORAGES = values.pop(
            "STORAGES", {"staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}
        )
        for name in (
            "CELERY_BROKER_TRANSPORT",
            "CELERY_BROKER_URL",
            "CELERY_RESULT_BACKEND",
            "CHANNEL_LAYERS",
        ):
            if hasattr(settings, name):
                delattr(settings, name)
        for name, value in values.items():
            setattr(settings, name, value)

    return configure


def setup(*args) -> str:
    out = StringIO()
    call_command("azure_setup", *args, stdout=out)
    return out.getvalue()


def steps(*args) -> list[dict]:
    return json.loads(setup("--json", *args))["steps"]


def test_postgres_alone_enables_entra_names_an_admin_creates_the_role_and_grants(site):
    site(DATABASES={"default": database()})
    script = setup("--resource-group", "rg1")
    assert "RESOURCE_GROUP=rg1" in script
    assert (
        'az postgres flexible-server update -g "$RESOURCE_GROUP" -n myserver --microsoft-entra-auth Enabled'
        in script
    )
    assert "microsoft-entra-admin create" in script and '--object-id "$PG_ADMIN_OID"' in script
    assert (
        "pgaadauth_create_principal_with_oid('my-app-identity', '$PRINCIPAL_ID', 'service', false, false)"
        in script
    )
    assert 'GRANT USAGE, CREATE ON SCHEMA public TO "my-app-identity";' in script
    assert "dbname=postgres" in script and "dbname=app" in script
    assert "redis" not in script and "storage" not in script


def test_the_identity_name_creates_the_role_by_name_when_it_is_the_user(site):
    site(DATABASES={"default": database()})
    script = setup("--identity-name", "my-app-identity")
    assert "pgaadauth_create_principal('my-app-identity', false, false)" in script
    assert "az ad sp list --display-name my-app-identity" in script
    other = setup("--identity-name", "someone-else")
    assert "pgaadauth_create_principal_with_oid('my-app-identity'" in other


def test_a_replica_is_read_only_and_set_up_on_its_primary(site):
    site(
        DATABASES={
            "default": database(),
            "replica": database(
                host="myreplica.postgres.database.azure.com",
                user="my-reader",
                OPTIONS={"managed_identity": {"client_id": USER_ID}},
                TEST={"MIRROR": "default"},
            ),
        }
    )
    found = steps()
    reader = [s for s in found if s["kind"] == "sql" and "my-reader" in s["text"]]
    assert {s["database"] for s in reader} == {"postgres", "app"}
    assert all(s["server"] == "myserver.postgres.database.azure.com:5432" for s in reader)
    grants = next(s["text"] for s in reader if s["database"] == "app")
    assert 'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "my-reader";' in grants
    assert 'ALTER DEFAULT PRIVILEGES FOR ROLE "my-app-identity"' in grants and "CREATE" not in grants
    lookups = {s["name"]: s for s in found if s["kind"] == "lookup"}
    assert lookups["PRINCIPAL_ID_11111111"]["text"] == f"az ad sp show --id {USER_ID} --query id -o tsv"
    assert any(s["kind"] == "note" and "myreplica" in s.get("text", "") for s in found)


def test_a_postgis_alias_gets_the_extension_allow_listed_and_created(site):
    site(DATABASES={"default": database(ENGINE="django_azure_mi.backends.postgis")})
    found = steps()
    note = next(s for s in found if s["kind"] == "note" and "azure.extensions" in s.get("text", ""))
    assert any("--value POSTGIS" in m for m in note["mentions"])
    create = next(s for s in found if s["kind"] == "sql" and "postgis" in s.get("text", ""))
    assert create["text"] == "CREATE EXTENSION IF NOT EXISTS postgis;" and create["database"] == "app"
    assert [s["kind"] for s in found].index("sql") < found.index(create)  # after the role is made
    site(DATABASES={"default": database()})
    assert "postgis" not in setup()


MYSQL = "django_azure_mi.backends.mysql"


def test_a_mysql_alias_gets_an_entra_admin_its_aad_user_and_grants(site):
    """A user-assigned identity's client id goes into CREATE AADUSER as Microsoft documents; a replica gets
    SELECT on its primary's database; the admin and the server's own identity are looked up or asked for."""
    geo = {"ENGINE": MYSQL, "HOST": "mysite-db.mysql.database.azure.com", "NAME": "app", "USER": "my-app"}
    site(
        DATABASES={
            "default": {**geo, "OPTIONS": {"managed_identity": {"client_id": USER_ID}}},
            "replica": {**geo, "HOST": "replica.mysql.database.azure.com", "TEST": {"MIRROR": "default"},
                        "OPTIONS": {"managed_identity": {"client_id": USER_ID}}},
        }
    )  # fmt: skip
    found = steps()
    admin = next(s for s in found if s["kind"] == "az" and "ad-admin create" in s.get("text", ""))
    assert "-s mysite-db " in admin["text"] and '--identity "$MYSQL_SERVER_IDENTITY"' in admin["text"]
    create = next(s for s in found if s["kind"] == "sql" and "AADUSER" in s.get("text", ""))
    assert f"CREATE AADUSER 'my-app' IDENTIFIED BY '{USER_ID}';" in create["text"]
    assert "--enable-cleartext-plugin" in create["runner"] and "VERIFY_IDENTITY" in create["runner"]
    assert '--ssl-ca="${MYSQL_SSL_CA:?' in create["runner"]  # Oracle's client verifies only with a CA file
    bundle = next(s for s in found if s.get("name") == "MYSQL_SSL_CA")
    here = subprocess.run(["sh", "-c", bundle["text"]], capture_output=True, text=True, check=True).stdout
    assert Path(here.strip()).is_file()  # this machine's trust store, found as the script finds it
    from django_azure_mi import provision

    plan = provision.build()
    first_sql = next(s for s in plan.steps if s.kind == "sql")
    assert "MYSQL_SSL_CA" in {s.name for s in plan.needed([first_sql])}  # --check keeps the lookup (${…})
    grants = [s["text"] for s in found if s["kind"] == "sql" and s["text"].startswith("GRANT")]
    assert grants == ["GRANT ALL PRIVILEGES ON \\`app\\`.* TO 'my-app'@'%';",
                      "GRANT SELECT ON \\`app\\`.* TO 'my-app'@'%';"]  # fmt: skip
    assert {s["name"] for s in found if s["kind"] == "lookup"} >= {"MYSQL_ADMIN", "MYSQL_SERVER_IDENTITY"}
    site(DATABASES={"default": geo})  # the system-assigned identity: its client id looked up
    text = setup()
    assert 'az ad sp show --id "$PRINCIPAL_ID" --query appId' in text and "'$APP_ID_SYSTEM'" in text
    site(DATABASES={"default": {**geo, "OPTIONS": {"ssl": {"ca": "/etc/my ca.pem"}}}})  # the alias's own CA
    text = setup()
    assert "--ssl-ca='/etc/my ca.pem'" in text and "MYSQL_SSL_CA" not in text


def test_several_aliases_with_several_identities_each_get_their_own_lookup(site):
    site(
        DATABASES={"default": database(OPTIONS={"managed_identity": {"client_id": USER_ID}})},
        CACHES={"default": cache(CLIENT_ID=OTHER_ID)},
        STORAGES={"default": storage()},
    )
    found = steps("--identity-name", f"{OTHER_ID}=cache-identity")
    names = [s["name"] for s in found if s["kind"] == "lookup"]
    assert {"PRINCIPAL_ID_11111111", "PRINCIPAL_ID_99999999", "PRINCIPAL_ID"} <= set(names)
    assert len(names) == len(set(names))
    by_name = {s["name"]: s for s in found if s["kind"] == "lookup"}
    assert "--display-name cache-identity" in by_name["PRINCIPAL_ID_99999999"]["text"]
    assert by_name["PRINCIPAL_ID"].get("text") is None  # system-assigned: the script asks for it
    amr = next(s for s in found if "redisenterprise database" in s.get("text", ""))
    assert '--object-id "$PRINCIPAL_ID_99999999"' in amr["text"]


def test_azure_cache_for_redis_turns_entra_on_and_assigns_a_data_access_policy(site):
    site(CACHES={"default": cache("rediss://old.redis.cache.windows.net:6380/0", USERNAME=USER_ID)})
    found = steps()
    texts = [s.get("text", "") for s in found]
    assert any("az redis update" in t and "redisConfiguration.aad-enabled=true" in t for t in texts)
    assert any("az redis access-policy-assignment create" in t and '"Data Owner"' in t for t in texts)
    note = next(s for s in found if s["kind"] == "note")
    assert "USERNAME" in note["text"] and "username-mismatch" in note["explains"]


def test_one_redis_serves_the_cache_celery_and_channels_in_one_step(site):
    url = "rediss://mycache.westeurope.redis.azure.net:10000/0"
    site(
        CACHES={"default": cache(url)},
        CELERY_BROKER_TRANSPORT=TRANSPORT,
        CELERY_BROKER_URL=url,
        CHANNEL_LAYERS={
            "default": {"BACKEND": "django_azure_mi.channels.RedisChannelLayer", "CONFIG": {"hosts": [url]}}
        },
    )
    (amr,) = [s for s in steps() if "redisenterprise database" in s.get("text", "")]
    assert amr["where"] == ["CACHES['default']", "CELERY_BROKER_URL", "CHANNEL_LAYERS['default']"]


def test_storage_gets_the_container_its_data_role_and_the_delegator_for_signed_urls(site):
    site(STORAGES={"default": storage()})
    plain = [s["text"] for s in steps() if s["kind"] == "az"]
    assert any("az storage container create --account-name myaccount -n media" in t for t in plain)
    assert any('"Storage Blob Data Contributor"' in t and "/containers/media" in t for t in plain)
    assert not any("Storage Blob Delegator" in t for t in plain)
    site(STORAGES={"default": storage(expiration_secs=3600)})
    signed = [s["text"] for s in steps() if s["kind"] == "az"]
    assert any('"Storage Blob Delegator"' in t and "/containers/" not in t for t in signed)


def test_key_vault_from_the_environment_or_the_option(site, monkeypatch):
    site()
    assert "keyvault" not in setup()
    found = [
        s["text"] for s in steps("--keyvault-url", "https://my-vault.vault.azure.net") if s["kind"] == "az"
    ]
    assert any('"Key Vault Secrets User"' in t and "-n my-vault" in t for t in found)
    monkeypatch.setenv("AZURE_KEY_VAULT_URL", "https://env-vault.vault.azure.net/")
    assert "-n env-vault" in setup()


@pytest.mark.parametrize(
    ("cloud", "pg", "redis", "blob", "vault", "az_name"),
    [
        ("public", "s.postgres.database.azure.com", "c.redis.cache.windows.net", "core.windows.net",
         "vault.azure.net", "AzureCloud"),
        ("usgovernment", "s.postgres.database.usgovcloudapi.net", "c.redis.cache.usgovcloudapi.net",
         "core.usgovcloudapi.net", "vault.usgovcloudapi.net", "AzureUSGovernment"),
        ("china", "s.postgres.database.chinacloudapi.cn", "c.redis.cache.chinacloudapi.cn",
         "core.chinacloudapi.cn", "vault.azure.cn", "AzureChinaCloud"),
    ],
)  # fmt: skip
def test_each_clouds_hosts_are_recognised(site, cloud, pg, redis, blob, vault, az_name):
    site(
        AZURE_MANAGED_IDENTITY={"CLOUD": cloud},
        DATABASES={"default": database(host=pg)},
        CACHES={"default": cache(f"rediss://{redis}:6380/0")},
        STORAGES={"default": storage(account_name="acct", account_url=f"https://acct.blob.{blob}")},
    )
    document = json.loads(setup("--json", "--keyvault-url", f"https://v.{vault}/"))
    assert document["cloud"] == cloud
    texts = " ".join(s.get("text", "") for s in document["steps"])
    assert "-n s --microsoft-entra-auth" in texts and 'az redis update -g "$RESOURCE_GROUP" -n c ' in texts
    assert "--account-name acct " in texts and "-n v " in texts  # the storage account's and vault's names
    assert "PG_SERVER" not in texts
    # azure-cli talks to Azure's public cloud unless told otherwise
    assert document["az_cloud"] == (None if cloud == "public" else f"az cloud set --name {az_name}")
    assert ("az cloud set" in setup()) == (cloud != "public")


def test_hosts_that_are_not_azure_names_ask_for_the_resource(site):
    site(
        DATABASES={"default": database(host="10.0.0.4")},
        CACHES={"default": cache("rediss://10.0.0.5:6380/0")},
    )
    found = steps()
    pg_server = next(s for s in found if s.get("name") == "PG_SERVER")
    assert pg_server.get("text") is None and "10.0.0.4" in pg_server["why"]
    assert any(s["kind"] == "note" and "10.0.0.5" in s["text"] for s in found)


def test_every_step_says_what_it_is_for(site):
    site(
        DATABASES={"default": database()},
        CACHES={"default": cache()},
        STORAGES={"default": storage(expiration_secs=60)},
    )
    for step in steps("--keyvault-url", "https://v.vault.azure.net"):
        assert step["kind"] in ("lookup", "az", "sql", "note")
        assert step.get("why") or step.get("text")
        if step["kind"] == "az":
            assert step["text"].startswith("az ") and step["where"]


@pytest.mark.parametrize("value", ["not-a-guid=name", "name=", f"{USER_ID}="])
def test_a_malformed_identity_name_is_refused(site, value):
    site(DATABASES={"default": database()})
    with pytest.raises(CommandError, match="--identity-name"):
        setup("--identity-name", value)


FAKE_AZ = """#!/bin/sh
echo "az $*" >> "$CALLS"
case "$*" in
  *"signed-in-user show --query userPrincipalName"*) echo admin@example.com ;;
  *"signed-in-user show --query id"*) echo 00000000-0000-0000-0000-00000000ad01 ;;
  *"ad sp show"*|*"ad sp list"*) echo 00000000-0000-0000-0000-0000000000b1 ;;
  *"get-access-token"*) echo not-a-real-token ;;
  *"account show"*|*"keyvault show"*) echo /subscriptions/s/resourceGroups/rg/providers/x/y ;;
esac
"""
FAKE_PSQL = """#!/bin/sh
{ echo "psql $*"; cat; } >> "$CALLS"
"""


def recording_tools(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """(the file the stand-in ``az`` and ``psql`` record their calls in, the environment that puts them first
    on PATH, with none of the script's variables set)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("az", FAKE_AZ), ("psql", FAKE_PSQL)):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(stat.S_IRWXU)
    calls = tmp_path / "calls"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(calls)}
    for name in ("PRINCIPAL_ID", "PG_ADMIN", "PG_ADMIN_OID", "PG_ADMIN_TYPE"):
        env.pop(name, None)
    return calls, env


def test_the_script_runs_and_hands_each_command_what_it_needs(site, tmp_path):
    """The script under ``sh`` with stand-in ``az`` and ``psql`` programs that record their arguments and
    input: every lookup feeds the commands after it, the SQL reaches psql with the object id filled in and
    the settings' odd characters intact (a role name with a quote and a dollar sign)."""
    site(
        DATABASES={"default": database(user="o'brien$x")},
        CACHES={"default": cache()},
        STORAGES={"default": storage(expiration_secs=60)},
    )
    script = tmp_path / "setup.sh"
    script.write_text(setup("--resource-group", "rg1", "--keyvault-url", "https://v.vault.azure.net"))
    calls, env = recording_tools(tmp_path)
    done = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "PRINCIPAL_ID" in done.stderr  # the system identity's id is asked for
    env["PRINCIPAL_ID"] = "00000000-0000-0000-0000-0000000000c1"
    calls.write_text("")
    done = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    recorded = calls.read_text()
    assert "'o''brien$x', '00000000-0000-0000-0000-0000000000c1', 'service'" in recorded
    assert 'TO "o\'brien$x";' in recorded
    assert "--object-id 00000000-0000-0000-0000-0000000000c1" in recorded
    assert (
        "-g rg1 -s myserver --display-name admin@example.com --object-id 00000000-0000-0000-0000-00000000ad01"
        in recorded
    )
    assert "-U admin@example.com" in recorded
    assert (
        "--scope /subscriptions/s/resourceGroups/rg/providers/x/y/blobServices/default/containers/media"
        in recorded
    )
    assert "$(" not in recorded and "${" not in recorded


def test_psqls_connection_string_keeps_the_settings_values_intact(site):
    """The SQL's psql gets the alias's NAME and TLS options as libpq reads them (quoted for libpq, then for
    the shell: a space, a quote, a backslash or a dollar sign arrives as written) and the admin by ``-U``,
    whose display name may have spaces (a group's)."""
    import shlex

    from psycopg.conninfo import conninfo_to_dict

    name = "my db's \\ $HOME"
    site(DATABASES={"default": database(name=name, OPTIONS={"sslrootcert": "/etc/my certs/ca.pem"})})
    runner = next(s["runner"] for s in steps() if s["kind"] == "sql" and s["database"] == name)
    words = shlex.split(runner.split(" psql ", 1)[1])
    assert conninfo_to_dict(words[0]) == {
        "host": "myserver.postgres.database.azure.com",
        "port": "5432",
        "dbname": name,
        "sslmode": "verify-full",
        "sslrootcert": "/etc/my certs/ca.pem",
    }
    assert words[1:3] == ["-U", "$PG_ADMIN"]  # shlex leaves it as the shell would expand it


def test_a_group_as_the_postgres_entra_admin_comes_from_the_environment(site, tmp_path):
    """An admin other than the signed-in user (a group, as Microsoft recommends): PG_ADMIN, PG_ADMIN_OID and
    PG_ADMIN_TYPE set in the environment reach the admin step and psql, and nobody's signed-in user is
    looked up."""
    site(DATABASES={"default": database()})
    script = tmp_path / "setup.sh"
    script.write_text(setup("--resource-group", "rg1"))
    calls, env = recording_tools(tmp_path)
    env["PRINCIPAL_ID"] = "00000000-0000-0000-0000-0000000000c1"
    env.update(
        PG_ADMIN="db admins", PG_ADMIN_OID="00000000-0000-0000-0000-00000000a9a9", PG_ADMIN_TYPE="Group"
    )
    done = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    recorded = calls.read_text()
    assert (
        "--display-name db admins --object-id 00000000-0000-0000-0000-00000000a9a9 --type Group" in recorded
    )
    assert "-U db admins" in recorded and "signed-in-user" not in recorded
    del env["PG_ADMIN_TYPE"], env["PG_ADMIN"], env["PG_ADMIN_OID"]
    calls.write_text("")
    done = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--object-id 00000000-0000-0000-0000-00000000ad01 --type User" in calls.read_text()


def test_the_script_is_valid_posix_shell(site, tmp_path):
    site(DATABASES={"default": database()}, CACHES={"default": cache()}, STORAGES={"default": storage()})
    script = tmp_path / "setup.sh"
    script.write_text(setup())
    for shell in ("sh", "bash"):
        done = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    assert Path(script).read_text().startswith("#!/bin/sh\n")


def test_the_docs_show_the_example_projects_steps():
    """docs/setup.md's example is the command's output for example_project/ with the variables it names."""
    import re
    import sys

    root = Path(__file__).parent.parent
    page = (root / "docs" / "setup.md").read_text()
    shown = re.search(r"<!-- generated:.*?-->\n```sh\n(.*?)```", page, re.S)[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "DJANGO_"))}
    env.update(
        DJANGO_SECRET_KEY="x",
        AZURE_POSTGRES_HOST="mysite-db.postgres.database.azure.com",
        AZURE_POSTGRES_USER="mysite-identity",
        AZURE_REDIS_URL="rediss://mysite-cache.westeurope.redis.azure.net:10000/0",
        AZURE_STORAGE_ACCOUNT="mysitefiles",
    )
    arguments = ["--resource-group", "mysite-rg", "--identity-name", "mysite-identity"]
    arguments += ["--keyvault-url", "https://mysite-vault.vault.azure.net"]
    done = subprocess.run(
        [sys.executable, "manage.py", "azure_setup", *arguments],
        cwd=root / "example_project",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == shown, "docs/setup.md's example differs from azure_setup's output: regenerate it"


def test_check_prints_only_what_explains_the_failures(
    azure_postgres, azure_redis, azure_imds, use_databases, settings
):
    """``--check`` on the stand-ins: a role nobody created, and a Redis USERNAME that is not the identity's
    object id (the client id, a common mix-up). The report leads with each diagnosis and holds only the
    steps that fix them (the role's SQL, the USERNAME note), not the whole plan; exit status 1."""
    use_databases(default="nobody-made-me")
    settings.CACHES = {"default": azure_redis.cache_settings(USERNAME=USER_ID)}
    settings.STORAGES = {"staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}
    out = StringIO()
    with pytest.raises(CommandError, match="2 of 2 checks failed"):
        call_command("azure_setup", "--check", stdout=out)
    report = out.getvalue()
    assert report.startswith("# postgres DATABASES['default']: Postgres refused the token for role")
    assert f"['USERNAME'] is '{USER_ID}' but the token's object id is" in report
    assert "pgaadauth_create_principal_with_oid('nobody-made-me'" in report
    assert "sets USERNAME" in report
    assert "GRANT" not in report and "microsoft-entra-admin" not in report  # not what is missing
    script = report.split("\n#!/bin/sh", 1)
    assert len(script) == 2 and "PRINCIPAL_ID=" in script[1] and "PG_ADMIN=" in script[1]
    azure_postgres.add_role("nobody-made-me")
    settings.CACHES = {"default": azure_redis.cache_settings()}
    healthy = StringIO()
    call_command("azure_setup", "--check", stdout=healthy)
    assert "healthy: nothing to set up" in healthy.getvalue()


ROUND_TRIP_AZ = """#!/bin/sh
echo "az $*" >> "$CALLS"
case "$*" in
  *"signed-in-user show --query userPrincipalName"*) echo dba ;;
  *"signed-in-user show --query id"*) echo "$ADMIN_OID" ;;
  *"ad sp list --display-name"*) echo "$APP_OID" ;;
  *"get-access-token --resource-type oss-rdbms"*) cat "$ADMIN_TOKEN_FILE" ;;
esac
"""


def run_script(
    script: Path, tmp_path: Path, admin_oid: str, admin_token: str, env: dict[str, str], **tools: str
) -> None:
    """Run the generated ``script`` with sh, the stand-in ``az`` (and ``tools``: name -> script) first on
    PATH, the Entra admin being ``admin_oid`` with ``admin_token``; it must succeed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in {"az": ROUND_TRIP_AZ, **tools}.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    token_file = tmp_path / "token"
    token_file.write_text(admin_token)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "CALLS": str(tmp_path / "calls"),
        "ADMIN_OID": admin_oid,
        "ADMIN_TOKEN_FILE": str(token_file),
        **env,
    }
    done = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


@pytest.mark.parametrize("by", ["name", "object id"])
def test_the_script_makes_a_server_with_only_its_entra_admin_work_for_the_site(
    by, azure_imds, azure_databases, tmp_path
):
    """The round trip on a new token-checking Postgres that has only its Entra admin (``dba``, a user
    signed in with az login): the site's sign-in fails with our diagnosis; the generated script, run by sh
    with the real psql (the ARM calls and the admin's token come from a stand-in ``az``), creates the role
    with Azure's function (by the identity's name, or bound to its object id) and the grants; then
    ``migrate`` and a query as the app's identity work. (Azure's own steps, enabling Entra sign-in and
    naming the admin, are what this server starts with: no stand-in plays ARM.)"""
    from django_azure_mi.testing.postgres import POSTGRES_RESOURCE, PostgresStandIn

    app = azure_imds.identity(None)  # the site's system-assigned identity, named "app-system"
    admin = azure_imds.add_identity("00000000-0000-0000-0000-0000000000da", name="dba")
    with PostgresStandIn(dbname="site") as server:
        server.attach(azure_imds)
        server.add_entra_admin("dba", admin.object_id)
        connections = azure_databases(default=server.database_settings(app.name))
        with pytest.raises(Exception, match="Postgres refused the token for role 'app-system'"):
            connections["default"].ensure_connection()
        arguments = ["--resource-group", "rg"] + (["--identity-name", app.name] if by == "name" else [])
        script = tmp_path / "setup.sh"
        script.write_text(setup(*arguments))
        assert ("pgaadauth_create_principal('app-system'" in script.read_text()) == (by == "name")
        env = {
            "APP_OID": app.object_id,
            "PG_SERVER": "standin",  # HOST is 127.0.0.1, as behind a private endpoint: the script asks
        }
        if by != "name":
            env["PRINCIPAL_ID"] = app.object_id  # the system-assigned identity's id, as the script asks
        admin_token = azure_imds.mint(POSTGRES_RESOURCE, admin.client_id, ttl=600).token
        run_script(script, tmp_path, admin.object_id, admin_token, env)
        assert server.bound_object_id("app-system") == app.object_id
        connections.close_all()
        call_command("migrate", verbosity=0)
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT current_user, count(*) FROM django_migrations")
            user, applied = cursor.fetchone()
        assert user == "app-system" and applied > 0
        connections.close_all()


# Oracle's mysql client, which the script's SQL steps are written for, played by MariaDB's: its TLS flag
# becomes MariaDB's, and like Oracle's it refuses VERIFY_IDENTITY without --ssl-ca (Oracle's has no default
# CA: the script names one); --enable-cleartext-plugin MariaDB's takes as obsolete
ORACLE_MYSQL = """#!/bin/sh
verify= ca=
for arg; do
  shift
  case "$arg" in
    --ssl-mode=VERIFY_IDENTITY) verify=1; set -- "$@" --ssl-verify-server-cert ;;
    --ssl-mode=*) echo "unexpected $arg" >&2; exit 2 ;;
    --ssl-ca=?*) ca=1; set -- "$@" "$arg" ;;
    *) set -- "$@" "$arg" ;;
  esac
done
if [ -n "$verify" ] && [ -z "$ca" ]; then
  echo "ERROR 2026 (HY000): SSL connection error: CA certificate is required if ssl-mode is VERIFY_CA or \
VERIFY_IDENTITY" >&2
  exit 1
fi
exec "$REAL_MYSQL" "$@"
"""


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("mysql") is None, reason="no mysql client here")
def test_the_script_makes_a_mysql_server_with_only_its_entra_admin_work_for_the_site(
    azure_imds, azure_databases, tmp_path
):
    """The MySQL round trip: a token-checking MySQL with only its Entra admin (``dba``); the site's
    sign-in is refused with our diagnosis; the generated script, run by sh with a real mysql client (the
    ARM calls and the admin's token from the stand-in ``az``), runs Azure's ``CREATE AADUSER … IDENTIFIED
    BY '<client id>'`` and the grant as the admin; then ``migrate`` and a query as the app's identity work.
    A user-assigned identity: the system-assigned one's client id comes from Microsoft Graph (``az ad sp
    show``), which no stand-in plays."""
    pytest.importorskip("pymysql")
    from django_azure_mi.testing.base import Missing
    from django_azure_mi.testing.mysql import MYSQL_RESOURCE, MySQLStandIn

    app = azure_imds.add_identity(USER_ID, name="my-app")
    admin = azure_imds.add_identity("00000000-0000-0000-0000-0000000000da", name="dba")
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(MySQLStandIn(dbname="site"))
        except Missing as exc:
            pytest.skip(str(exc))
        server.attach(azure_imds)
        server.add_entra_admin("dba", admin.object_id)
        connections = azure_databases(default=server.database_settings("my-app", client_id=app.client_id))
        with pytest.raises(Exception, match="MySQL refused the token for user 'my-app'"):
            connections["default"].ensure_connection()
        script = tmp_path / "setup.sh"
        script.write_text(setup("--resource-group", "rg"))
        assert f"CREATE AADUSER 'my-app' IDENTIFIED BY '{USER_ID}';" in script.read_text()
        assert f"--ssl-ca={server.ca_file}" in script.read_text()  # the alias's CA, as the alias verifies
        env = {
            "MYSQL_SERVER": "standin",  # HOST is 127.0.0.1, as behind a private endpoint: the script asks
            "MYSQL_SERVER_IDENTITY": "mysql-directory-reader",
            "REAL_MYSQL": str(shutil.which("mysql")),
        }
        admin_token = azure_imds.mint(MYSQL_RESOURCE, admin.client_id, ttl=600).token
        run_script(script, tmp_path, admin.object_id, admin_token, env, mysql=ORACLE_MYSQL)
        calls = (tmp_path / "calls").read_text()
        assert "az mysql flexible-server ad-admin create" in calls
        connections.close_all()
        call_command("migrate", verbosity=0)
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT current_user(), count(*) FROM django_migrations")
            user, applied = cursor.fetchone()
        assert user == "my-app@%" and applied > 0
        connections.close_all()


@pytest.mark.integration
@pytest.mark.parametrize(
    "host", ["mycache.westeurope.redis.azure.net:10000", "old-cache.redis.cache.windows.net:6380"]
)
def test_the_scripts_access_policy_assignment_lets_the_site_into_redis(host, site, azure_imds, tmp_path):
    """The Redis round trip, on Azure Managed Redis and on Azure Cache for Redis: a token-checking Redis on
    which the site's identity has no access policy refuses the site's cache with our diagnosis; the script
    runs (sh, a recording ``az``), and its access policy assignment becomes what Azure makes of it: a
    Redis user named by the object id it gave (the stand-ins play no ARM, so the test applies the
    recorded assignment, as Azure's control plane would); then the site's cache works as that identity."""
    import re

    from django.core.cache import caches

    from django_azure_mi.testing.redis import redis_stand_in

    app = azure_imds.identity(None)
    with redis_stand_in("single") as redis:
        redis.attach(azure_imds)
        site(CACHES={"default": cache(f"rediss://{host}/0")})  # what azure_setup reads: the Azure name
        script = tmp_path / "setup.sh"
        script.write_text(setup("--resource-group", "rg"))
        site(CACHES={"default": redis.cache_settings("builtin")})  # the same identity, at the stand-in
        with pytest.raises(Exception, match="no access policy"):
            caches["default"].set("k", 1)
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "az").write_text(FAKE_AZ)
        (bin_dir / "az").chmod(stat.S_IRWXU)
        calls = tmp_path / "calls"
        env = {
            **os.environ,
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "CALLS": str(calls),
            "PRINCIPAL_ID": app.object_id,  # the system-assigned identity's id, as the script asks
        }
        done = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assignments = [
            re.search(r"--object-id (\S+)", line)
            for line in calls.read_text().splitlines()
            if "access-policy-assignment create" in line
        ]
        assert len(assignments) == 1 and assignments[0], calls.read_text()
        redis.add_identity(assignments[0][1])  # what Azure does with the assignment
        caches["default"].set("k", 1)
        assert caches["default"].get("k") == 1
        caches["default"].close()


def test_the_scripts_role_assignment_lets_the_site_read_key_vault(site, azure_keyvault, azure_imds, tmp_path):
    """The Key Vault round trip: a vault in RBAC mode where the site's identity has no role refuses the
    secret (403 ForbiddenByRbac) with our diagnosis; the script runs (a recording ``az``), its *Key Vault
    Secrets User* assignment is applied as Azure would (the stand-in plays no ARM), and the secret reads."""
    import re

    from django_azure_mi import keyvault

    app = azure_imds.identity(None)
    azure_keyvault.revoke(app.object_id)
    azure_keyvault.set_secret("db-password", "s3cret")
    site()
    script = tmp_path / "setup.sh"
    script.write_text(
        setup("--resource-group", "rg", "--keyvault-url", "https://mysite-vault.vault.azure.net")
    )
    with pytest.raises(keyvault.SecretError, match="Key Vault Secrets User"):
        keyvault.secret("db-password")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "az").write_text(FAKE_AZ)
    (bin_dir / "az").chmod(stat.S_IRWXU)
    calls = tmp_path / "calls"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(calls)}
    env["PRINCIPAL_ID"] = app.object_id
    done = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    (assignment,) = [
        line
        for line in calls.read_text().splitlines()
        if "Key Vault Secrets User" in line or "4633458b" in line
    ]
    azure_keyvault.grant(re.search(r"--assignee-object-id (\S+)", assignment)[1])  # what Azure does with it
    assert keyvault.secret("db-password") == "s3cret"


def test_the_stand_ins_principal_functions_refuse_what_azure_refuses(azure_imds):
    """``pgaadauth_create_principal`` finds the identity by its name in the tenant: none, or two with the same
    name, is an error (``…_with_oid`` is the way out); only the Entra admin may run them; an object id or
    type that is not one is refused."""
    from django_azure_mi.testing.postgres import PostgresStandIn

    azure_imds.add_identity("00000000-0000-0000-0000-0000000000a1", name="twin")
    azure_imds.add_identity("00000000-0000-0000-0000-0000000000a2", name="twin")
    azure_imds.identity(None)  # the system-assigned identity, "app-system", in the tenant too
    with PostgresStandIn() as server:
        server.attach(azure_imds)
        for call, message in [
            (
                "pgaadauth_create_principal('nobody', false, false)",
                'Could not find a Microsoft Entra principal named "nobody"',
            ),
            ("pgaadauth_create_principal('twin', false, false)", "More than one Microsoft Entra principal"),
            (
                "pgaadauth_create_principal_with_oid('x', 'not-a-guid', 'service', false, false)",
                "Invalid object id",
            ),
            ("pgaadauth_create_principal_with_oid('x', %s, 'robot', false, false)", "Invalid object type"),
        ]:
            params = [azure_imds.object_id()] if "%s" in call else None
            with pytest.raises(Exception, match=message):
                server.execute(f"SELECT * FROM {call}", params)
        server.execute("CREATE ROLE plain LOGIN")
        function = "public.pgaadauth_create_principal(text, boolean, boolean)"
        refused = server.execute("SELECT has_function_privilege('plain', %s, 'EXECUTE')", [function])
        assert refused == [(False,)]
        assert server.execute("SELECT * FROM pgaadauth_create_principal('app-system', false, false)")
        assert server.bound_object_id("app-system") == azure_imds.object_id()
