"""The stand-ins survive bad input as the real servers do: they answer with the error the real server
gives and keep serving everyone else."""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
from urllib.parse import urlsplit

import pytest
from django.core.cache import caches

from .test_cache import cache_settings


def tls_socket(host: str, port: int, ca_file: str) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=ca_file)
    return context.wrap_socket(socket.create_connection((host, port), timeout=10), server_hostname=host)


def read_all(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (OSError, ssl.SSLError):
        pass
    return data


@pytest.mark.parametrize("garbage", [b"*abc\r\n", b"*1\r\n:5\r\n", b"*2\r\n$-5\r\n"])
def test_the_redis_enforcer_passes_protocol_errors_to_redis_and_keeps_serving(
    garbage, azure_redis, azure_imds, settings
):
    """``*abc`` once killed the enforcer's connection thread without an answer. Redis replies
    ``-ERR Protocol error`` and closes the connection; the enforcer lets it, and serves the next client."""
    url = urlsplit(azure_redis.url)
    with tls_socket(url.hostname, url.port, azure_redis.ca_file) as sock:
        sock.sendall(garbage)
        answer = read_all(sock)
    assert answer.startswith(b"-ERR Protocol error"), answer
    settings.CACHES = {"default": cache_settings(azure_redis, "builtin")}
    caches["default"].set("after-garbage", 1)
    assert caches["default"].get("after-garbage") == 1


@pytest.mark.parametrize(("length", "status"), [(b"abc", b"400"), (b"-5", b"400"), (b"99999999999", b"413")])
def test_the_keyvault_stand_in_answers_a_bad_content_length_and_keeps_serving(
    length, status, azure_keyvault, azure_imds
):
    """A bad Content-Length once dropped the connection without an answer (a ValueError in the handler)."""
    from django_azure_mi.keyvault import secret

    url = urlsplit(azure_keyvault.url)
    with tls_socket(url.hostname, url.port, azure_keyvault.ca_file) as sock:
        sock.sendall(
            b"PUT /secrets/x?api-version=7.4 HTTP/1.1\r\nHost: vault\r\nContent-Length: "
            + length
            + b"\r\n\r\n"
        )
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 " + status), answer
    azure_keyvault.set_secret("still-serving", "yes")
    assert secret("still-serving") == "yes"


def test_the_postgres_gateway_survives_garbage_huge_lengths_and_half_open_ssl_requests(
    azure_postgres, azure_imds, use_databases
):
    """Kept from the first security round: the gateway already survived these."""
    from django.db import connections

    host, port = azure_postgres.host, azure_postgres.port
    for payload in (b"\x00" * 3, b"garbage garbage garbage", struct.pack("!ii", 0x7FFFFFFF, 196608)):
        with socket.create_connection((host, port), timeout=10) as sock:
            with contextlib.suppress(OSError):  # the gateway may have hung up already
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
            read_all(sock)
    half_open = []
    for _ in range(50):  # SSLRequest, then nothing
        sock = socket.create_connection((host, port), timeout=10)
        sock.sendall(struct.pack("!ii", 8, 80877103))
        half_open.append(sock)
    try:
        use_databases(default=azure_postgres.database_settings("app-identity"))
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT 1")
            assert cursor.fetchone() == (1,)
    finally:
        for sock in half_open:
            sock.close()


def test_a_redis_port_another_worker_took_is_picked_again_not_mistaken_for_ours(azure_redis, tmp_path):
    """Parallel workers pick free ports at once; when another worker's redis-server binds the port first,
    ours fails to bind while the other answers there. Taking that server for ours once sent the bootstrap
    to another stand-in's locked-down server (CI: ``HELLO must be called with the client already
    authenticated``). Now the launcher sees it is not ours and says so, and a stand-in picks again."""
    from django_azure_mi.testing.redis import PortTaken, RedisStandIn, launch_redis

    with pytest.raises(PortTaken):
        launch_redis(str(tmp_path / "taken"), azure_redis.redis_port)
    assert azure_redis.admin().ping()  # the other server is untouched

    class Unlucky(RedisStandIn):
        """The first port this stand-in picks is the other one's, as in the race."""

        picks = [azure_redis.redis_port]

        def _start_server(self) -> None:
            if self.picks:
                self.redis_port = self.picks.pop()
            super()._start_server()

    with Unlucky() as server:
        assert server.redis_port != azure_redis.redis_port
        assert server.admin().ping()
