"""The MySQL stand-in (``django_azure_mi.testing.mysql``): a real MariaDB behind a gateway that checks
Microsoft Entra tokens as Azure Database for MySQL does, over the MySQL protocol, with real clients
(PyMySQL and MariaDB's own ``mariadb`` client)."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

pymysql = pytest.importorskip("pymysql")

pytestmark = pytest.mark.integration

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


def test_every_unexpired_token_of_the_identity_signs_in_over_tls(my, azure_imds):
    first, second = token(azure_imds), token(azure_imds)
    connections = [connect(my, USER, t) for t in (first, second)]  # two processes, two tokens, at once
    for connection in connections:
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_user()")
            assert cursor.fetchone()[0] == f"{USER}@localhost"
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
def test_a_token_azure_would_refuse_is_error_1045(my, azure_imds, claims, why):
    with pytest.raises(pymysql.err.OperationalError) as info:
        connect(my, USER, token(azure_imds, **claims))
    assert info.value.args[0] == 1045 and "Access denied for user 'app-identity'" in info.value.args[1]
    assert my.refusals[-1] == f"{USER}: {why}"


def test_not_a_token_is_refused_and_a_password_user_signs_in_with_its_password(my):
    with pytest.raises(pymysql.err.OperationalError, match="1045"):
        connect(my, USER, "not-a-token")
    assert my.refusals[-1] == f"{USER}: invalid"
    with connect(my, "stock", "stock-password").cursor() as cursor:  # Azure's built-in authentication
        cursor.execute("SELECT current_user()")
        assert cursor.fetchone()[0] == "stock@localhost"
    with pytest.raises(pymysql.err.OperationalError, match="1045"):
        connect(my, "stock", "wrong")


def test_a_session_outlives_its_token(my, azure_imds):
    connection = connect(my, USER, token(azure_imds, ttl=2))
    time.sleep(3)
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)
    connection.close()
    with pytest.raises(pymysql.err.OperationalError, match="1045"):
        connect(my, USER, token(azure_imds, ttl=-1))


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
    assert done.returncode == 0 and f"{USER}@localhost" in done.stdout, done.stderr
    done = subprocess.run(
        [*base, "--skip-ssl", "-u", "stock", "-pstock-password"], capture_output=True, text=True
    )
    assert done.returncode == 1 and "ERROR 3159" in done.stderr
