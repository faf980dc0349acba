"""Azure Database for MySQL: the stand-in (``django_azure_mi.testing.mysql``: a real MariaDB behind a
gateway that checks Microsoft Entra tokens as Azure does, over the MySQL protocol, with real clients:
PyMySQL and MariaDB's own ``mariadb``) and our ENGINE (``django_azure_mi.backends.mysql``) on it, with
PyMySQL standing in for mysqlclient (``pymysql.install_as_MySQLdb()``, as Django documents)."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

pymysql = pytest.importorskip("pymysql")  # standing in for mysqlclient as MySQLdb (conftest.py)
# Its errors by their top-level names: once Django's MySQL backend has imported PyMySQL as MySQLdb, the
# attribute pymysql.err is a second copy of that module (MySQLdb.err, set on the same package), whose
# classes are not the ones PyMySQL's connections raise.

USER = "app-identity"


@pytest.fixture(scope="module")
def mysql_server():
    from django_azure_mi.testing.base import Missing
    from django_azure_mi.testing.mysql import MySQLStandIn

    try:
        with MySQLStandIn() as server:
            yield server
    except Missing as exc:
        pytest.skip(str(exc))


@pytest.fixture
def my(mysql_server, azure_imds):
    mysql_server.add_user(USER)
    mysql_server.set_password("stock", "stock-password")
    detach = mysql_server.attach(azure_imds)
    yield mysql_server
    detach()


def connect(server, user, password, **extra):
    extra.setdefault("ssl", {"ca": server.ca_file})
    return pymysql.connect(
        host=server.host, port=server.port, user=user, password=password, database="app", **extra
    )


def token(imds, **claims):
    from django_azure_mi.testing.mysql import MYSQL_RESOURCE

    return imds.mint(MYSQL_RESOURCE, None, **claims).token


@pytest.mark.integration
def test_every_unexpired_token_of_the_identity_signs_in_over_tls(my, azure_imds):
    first, second = token(azure_imds), token(azure_imds)
    connections = [connect(my, USER, t) for t in (first, second)]  # two processes, two tokens, at once
    for connection in connections:
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_user()")
            assert cursor.fetchone()[0] == f"{USER}@%"
        connection.close()
    assert my.sign_ins >= 2


@pytest.mark.parametrize(
    ("claims", "why"),
    [
        ({"exp": time.time() - 5}, "expired"),
        ({"aud": "https://vault.azure.net"}, "audience https://vault.azure.net"),
        ({"oid": "00000000-0000-0000-0000-00000000beef"}, "identity 00000000-0000-0000-0000-00000000beef"),
    ],
)
@pytest.mark.integration
def test_a_token_azure_would_refuse_is_error_1045(my, azure_imds, claims, why):
    with pytest.raises(pymysql.OperationalError) as info:
        connect(my, USER, token(azure_imds, **claims))
    assert info.value.args[0] == 1045 and "Access denied for user 'app-identity'" in info.value.args[1]
    assert my.refusals[-1] == f"{USER}: {why}"


@pytest.mark.integration
def test_not_a_token_is_refused_and_a_password_user_signs_in_with_its_password(my):
    with pytest.raises(pymysql.OperationalError, match="1045"):
        connect(my, USER, "not-a-token")
    assert my.refusals[-1] == f"{USER}: invalid"
    with connect(my, "stock", "stock-password").cursor() as cursor:  # Azure's built-in authentication
        cursor.execute("SELECT current_user()")
        assert cursor.fetchone()[0] == "stock@%"
    with pytest.raises(pymysql.OperationalError, match="1045"):
        connect(my, "stock", "wrong")


@pytest.mark.integration
def test_a_session_outlives_its_token(my, azure_imds):
    connection = connect(my, USER, token(azure_imds, ttl=2))
    time.sleep(3)
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)
    connection.close()
    with pytest.raises(pymysql.OperationalError, match="1045"):
        connect(my, USER, token(azure_imds, ttl=-1))


@pytest.mark.integration
def test_the_gateway_survives_a_truncated_handshake(my, azure_imds):
    """A client that asks for TLS and then sends a handshake response cut short gets its connection closed;
    the gateway goes on serving."""
    import socket
    import ssl
    import struct

    from django_azure_mi.testing.mysqlgateway import read_packet, write_packet

    with socket.create_connection((my.host, my.port), timeout=10) as raw:
        read_packet(raw)
        write_packet(raw, 1, struct.pack("<I", 0x800 | 0x200 | 0x8000) + bytes(28))  # SSLRequest
        context = ssl.create_default_context(cafile=my.ca_file)
        with context.wrap_socket(raw, server_hostname=my.host) as tls:
            write_packet(tls, 2, struct.pack("<I", 0x200 | 0x8000) + bytes(28) + b"app-identity\0")
            assert tls.recv(100) == b""  # closed, no answer
    with connect(my, USER, token(azure_imds)).cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("mariadb") is None, reason="MariaDB's client (mariadb) is not installed")
def test_the_mariadb_client_signs_in_with_a_token_and_never_without_tls(my, azure_imds):
    """The ``mariadb`` client (libmariadb) sends the token in clear when asked (its cleartext plugin
    needs no option), over TLS that it verifies; without TLS it gets Azure's error 3159."""
    base = [
        "mariadb",
        "--no-defaults",
        "-h",
        my.host,
        "-P",
        str(my.port),
        "-e",
        "SELECT current_user()",
        "app",
    ]
    verified = ["--ssl-ca", my.ca_file, "--ssl-verify-server-cert"]
    done = subprocess.run(
        [*base, *verified, "-u", USER, f"-p{token(azure_imds)}"], capture_output=True, text=True
    )
    assert done.returncode == 0 and f"{USER}@%" in done.stdout, done.stderr
    done = subprocess.run(
        [*base, "--skip-ssl", "-u", "stock", "-pstock-password"], capture_output=True, text=True
    )
    assert done.returncode == 1 and "ERROR 3159" in done.stderr


# ------------------------------------------------------------------------------------------ the ENGINE

MYSQL = "django_azure_mi.backends.mysql"
AZURE_HOST = "mysite-db.mysql.database.azure.com"


@pytest.mark.integration
def test_the_engine_migrates_and_queries_as_the_identity(my, azure_databases):
    """Django's ``migrate`` and queries through our ENGINE, signed in with the identity's token over
    verified TLS (the stand-in's CA), nothing refused."""
    from django.contrib.auth.models import Group
    from django.core.management import call_command

    connections = azure_databases(default=my.database_settings(USER))
    before, refused = my.sign_ins, len(my.refusals)
    call_command("migrate", "auth", verbosity=0)
    Group.objects.create(name="mysql")
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT current_user()")
        assert cursor.fetchone()[0] == f"{USER}@%"
    assert Group.objects.filter(name="mysql").count() == 1
    connections.close_all()
    assert my.sign_ins > before and len(my.refusals) == refused


@pytest.mark.integration
@pytest.mark.azure_imds(ttl=6)
def test_each_new_connection_takes_a_current_token(my, azure_databases, azure_imds):
    """Two physical connections a token lifetime apart (6 s tokens): the second signs in with a newer
    token, the first one's having expired; persistent connections and health checks reconnect the same
    way (a new physical connection, a current token)."""
    connections = azure_databases(default=my.database_settings(USER))
    refused = len(my.refusals)
    connections["default"].ensure_connection()
    connections["default"].close()
    time.sleep(6.5)
    connections["default"].ensure_connection()
    connections["default"].close()
    fingerprints = my._gateway.accepted[-2:]
    assert len(set(fingerprints)) == 2 and len(my.refusals) == refused


@pytest.mark.integration
def test_a_refused_sign_in_names_the_user_and_the_fix_and_carries_no_token(my, azure_databases, caplog):
    from django.db import OperationalError

    connections = azure_databases(default=my.database_settings("nobody"))
    with pytest.raises(OperationalError) as info:
        connections["default"].ensure_connection()
    text = str(info.value)
    assert "MySQL refused the token for user 'nobody'" in text and "CREATE AADUSER" in text
    assert "eyJ" not in text and "eyJ" not in caplog.text
    assert info.value.__cause__ is None or "eyJ" not in str(info.value.__cause__)


def config(client, **settings):
    from django_azure_mi.backends.mysql.config import alias_config

    entry = {"ENGINE": MYSQL, "HOST": AZURE_HOST, "NAME": "app", "USER": USER, **settings}
    return alias_config(entry, "default", client=client)


def test_off_loopback_the_token_goes_only_over_verified_tls():
    """PyMySQL gets a default SSL context (the OS trust store, the name checked); mysqlclient gets
    VERIFY_IDENTITY with the OS trust store's file; to loopback nothing is added."""
    import ssl

    added = config("pymysql").tls
    assert isinstance(added["ssl"], ssl.SSLContext) and added["ssl"].check_hostname
    assert added["ssl"].verify_mode == ssl.CERT_REQUIRED
    added = config("mysqlclient").tls
    assert added["ssl_mode"] == "VERIFY_IDENTITY" and added["ssl"]["ca"]
    assert config("pymysql", HOST="127.0.0.1").tls == {}
    assert config("mysqlclient", HOST="localhost").tls == {}
    ca = {"ssl": {"ca": "/etc/my-ca.pem"}}
    assert config("mysqlclient", OPTIONS=ca).tls["ssl"] == {"ca": "/etc/my-ca.pem"}
    assert config("pymysql", OPTIONS=ca).tls == {"ssl_verify_cert": True, "ssl_verify_identity": True}


@pytest.mark.parametrize(
    ("client", "settings", "check_id"),
    [
        ("pymysql", {"PASSWORD": "hunter2"}, "E071"),
        ("pymysql", {"OPTIONS": {"passwd": "hunter2"}}, "E071"),
        ("pymysql", {"USER": ""}, "E072"),
        ("pymysql", {"OPTIONS": {"ssl_disabled": True}}, "E073"),
        ("pymysql", {"OPTIONS": {"ssl_verify_identity": False}}, "E073"),
        ("mysqlclient", {"OPTIONS": {"ssl_mode": "PREFERRED"}}, "E073"),
        ("mysqlclient", {"OPTIONS": {"ssl_mode": "REQUIRED"}}, "E073"),
        ("mysqlclient", {"OPTIONS": {"ssl_mode": "sometimes"}}, "E073"),
        ("pymysql", {"OPTIONS": {"managed_identity": {"clientid": "x"}}}, "E070"),
    ],
)
def test_misconfigurations_name_the_setting(client, settings, check_id):
    from django_azure_mi.diagnostics import SettingError

    with pytest.raises(SettingError) as info:
        config(client, **settings)
    assert info.value.check_id == check_id and "DATABASES['default']" in str(info.value)


def test_unverified_tls_is_a_documented_opt_out_and_loopback_needs_none():
    opt_out = {"managed_identity": {"verify_tls": False}}
    assert config("mysqlclient", OPTIONS={"ssl_mode": "REQUIRED", **opt_out}).tls == {}
    assert config("pymysql", HOST="127.0.0.1", OPTIONS={"ssl_disabled": True}).tls == {}
    assert config("pymysql", OPTIONS={"managed_identity": {"enabled": False}}) is None


@pytest.mark.integration
def test_azure_check_probes_a_mysql_alias(my, azure_databases, capsys):
    import json

    from django.core.management import call_command

    azure_databases(default=my.database_settings(USER))
    call_command("azure_check", "--json", "--database", "default")
    (result,) = json.loads(capsys.readouterr().out)["results"]
    assert result["ok"] and result["service"] == "mysql", result
    assert result["details"]["current_user"] == f"{USER}@%"
    assert result["details"]["tls"].startswith(("TLSv1", "TLS required"))  # PyMySQL, mysqlclient


def test_without_a_ca_file_mysqlclient_is_refused_with_the_fix(monkeypatch):
    import ssl

    from django_azure_mi.diagnostics import SettingError

    nowhere = ssl.DefaultVerifyPaths("", "", "/nonexistent/cert.pem", "", "/nonexistent", "")
    monkeypatch.setattr(ssl, "get_default_verify_paths", lambda: nowhere)
    monkeypatch.setattr("os.path.exists", lambda path: False)
    with pytest.raises(SettingError) as info:
        config("mysqlclient")
    assert info.value.check_id == "E074" and "['ssl']" in str(info.value)


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("mysql") is None, reason="no mysql client here")
def test_dbshell_signs_in_with_a_fresh_token_never_on_argv(my, azure_databases, capfd):
    from django.core.management import call_command

    from django_azure_mi.backends.mysql.client import DatabaseClient

    connections = azure_databases(default=my.database_settings(USER))
    args, env = DatabaseClient.settings_to_cmd_args_env(connections["default"].settings_dict, [])
    assert not any("eyJ" in arg for arg in args) and env["MYSQL_PWD"].startswith("eyJ")
    call_command("dbshell", "--", "-N", "-e", "SELECT current_user()")
    assert f"{USER}@%" in capfd.readouterr().out


def test_dbshell_verifies_a_remote_server_with_the_clients_own_flags(azure_imds):
    from django_azure_mi.backends.mysql.client import DatabaseClient, is_mariadb

    entry = {"ENGINE": MYSQL, "HOST": AZURE_HOST, "PORT": "", "NAME": "app", "USER": USER, "PASSWORD": "",
             "OPTIONS": {}}  # fmt: skip
    args, env = DatabaseClient.settings_to_cmd_args_env(entry, [])
    assert env["MYSQL_PWD"].startswith("eyJ") and not any("eyJ" in arg for arg in args)
    assert any(arg.startswith("--ssl-ca=") for arg in args)
    if is_mariadb("mysql"):
        assert "--ssl-verify-server-cert" in args and "--enable-cleartext-plugin" not in args
    else:
        assert "--ssl-mode=VERIFY_IDENTITY" in args and "--enable-cleartext-plugin" in args


def test_the_tls_rule_judges_where_the_driver_really_connects():
    """Django hands the driver OPTIONS['host'] over HOST; a Unix socket is loopback only when no other
    host is given (mysqlclient goes over TCP to a remote host even with unix_socket set)."""
    from django_azure_mi.diagnostics import SettingError

    assert config("pymysql", HOST="/var/run/mysqld/mysqld.sock", OPTIONS={"ssl_disabled": True}).tls == {}
    assert config("pymysql", HOST="", OPTIONS={"unix_socket": "/s", "ssl_disabled": True}).tls == {}
    for options in ({"host": AZURE_HOST}, {"unix_socket": "/s"}):
        host = "127.0.0.1" if "host" in options else AZURE_HOST
        with pytest.raises(SettingError) as info:
            config("pymysql", HOST=host, OPTIONS={**options, "ssl_disabled": True})
        assert info.value.check_id == "E073"


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("mysqldump") is None, reason="no mysqldump here")
def test_parallel_test_databases_are_cloned_with_a_token(my, azure_databases, capfd):
    """``manage.py test --parallel`` clones the test database with ``mysqldump | mysql``: Django's own
    clone runs its client class, which sends no password (1045, and every clone stayed empty); ours signs
    both tools in with a token, and the clone has the tables."""
    from django.core.management import call_command

    connections = azure_databases(default=my.database_settings(USER))
    connection = connections["default"]
    my.execute("CREATE OR REPLACE DATABASE `app_clone_1`")  # as Django's _clone_test_db does first
    call_command("migrate", "auth", verbosity=0)
    refused = len(my.refusals)
    connection.creation._clone_db("app", "app_clone_1")
    tables = {row[0] for row in my.execute("SHOW TABLES", database="app_clone_1")}
    assert "auth_group" in tables and len(my.refusals) == refused
    assert "eyJ" not in capfd.readouterr().err
    my.execute("DROP DATABASE `app_clone_1`")


@pytest.mark.integration
@pytest.mark.azure_imds(ttl=6)
def test_a_health_checked_persistent_connection_reconnects_with_a_current_token(my, azure_databases):
    """CONN_MAX_AGE with CONN_HEALTH_CHECKS: a connection the server closed is replaced at the next request
    by a new one that signs in with a current token (the first one's expired meanwhile)."""
    from django.db import close_old_connections

    connections = azure_databases(
        default=my.database_settings(USER, CONN_MAX_AGE=None, CONN_HEALTH_CHECKS=True)
    )
    connection = connections["default"]
    close_old_connections()  # a request starts
    with connection.cursor() as cursor:
        cursor.execute("SELECT CONNECTION_ID()")
        (first,) = cursor.fetchone()
    close_old_connections()  # it ends: the connection stays
    my.execute(f"KILL {int(first)}")  # the server ends the session (a restart, a failover)
    time.sleep(6.5)  # the token it signed in with has expired
    refused = len(my.refusals)
    close_old_connections()  # the next request: the health check finds it gone
    with connection.cursor() as cursor:
        cursor.execute("SELECT CONNECTION_ID(), current_user()")
        second, user = cursor.fetchone()
    assert second != first and user == f"{USER}@%" and len(my.refusals) == refused
    assert len(set(my._gateway.accepted[-2:])) == 2


@pytest.mark.integration
def test_the_entra_admin_creates_aad_users_as_azure_does(my, azure_imds):
    """``CREATE AADUSER`` (by client id, or by a principal's name) from the Entra admin's session makes a
    user bound to that identity with no privileges until granted; a second one of the same name is error
    1396; from anyone else it is the real server's syntax error."""
    from django_azure_mi.testing.mysql import MYSQL_RESOURCE

    admin = azure_imds.add_identity("00000000-0000-0000-0000-0000000000da", name="dba")
    app = azure_imds.add_identity("00000000-0000-0000-0000-0000000000a1", name="named-app")
    my.add_entra_admin("dba", admin.object_id)
    session = connect(my, "dba", azure_imds.mint(MYSQL_RESOURCE, admin.client_id).token)
    with session.cursor() as cursor:
        cursor.execute("SET aad_auth_validate_oids_in_tenant = OFF")
        cursor.execute(f"CREATE AADUSER 'by-client-id' IDENTIFIED BY '{app.client_id}'")
        cursor.execute("CREATE AADUSER 'named-app'")
        with pytest.raises(Exception) as info:
            cursor.execute("CREATE AADUSER 'named-app'")
        assert info.value.args[0] == 1396
    app_token = azure_imds.mint(MYSQL_RESOURCE, app.client_id).token
    for user in ("by-client-id", "named-app"):
        with pytest.raises(Exception) as info:
            connect(my, user, app_token)  # signs in, but may not use the database yet
        assert info.value.args[0] == 1044  # access denied to database 'app'
    with session.cursor() as cursor:
        cursor.execute("GRANT ALL PRIVILEGES ON `app`.* TO 'named-app'@'%'")
    with connect(my, "named-app", app_token).cursor() as cursor:
        cursor.execute("SELECT current_user()")
        assert cursor.fetchone()[0] == "named-app@%"
    with pytest.raises(Exception) as info:
        connect(my, "by-client-id", azure_imds.mint(MYSQL_RESOURCE, admin.client_id).token)
    assert info.value.args[0] == 1045  # another identity's token
    stock = connect(my, "stock", "stock-password")
    with stock.cursor() as cursor, pytest.raises(Exception) as info:
        cursor.execute("CREATE AADUSER 'x' IDENTIFIED BY 'y'")
    assert info.value.args[0] == 1064  # MariaDB's syntax error
    session.close()
    stock.close()


@pytest.mark.integration
def test_the_azure_mysql_fixture_serves_a_users_own_test(azure_mysql, azure_databases):
    """What a site's own suite does with the shipped fixtures: our ENGINE on the session's MySQL stand-in,
    signed in as the system-assigned identity with this test's tokens."""
    connections = azure_databases(default=azure_mysql.database_settings("app-identity"))
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT current_user()")
        assert cursor.fetchone()[0] == "app-identity@%"
