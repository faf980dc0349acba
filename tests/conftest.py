from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from azure.identity import ManagedIdentityCredential

from django_azure_mi.core import TokenProvider
from django_azure_mi.testing.pytest_plugin import reset_connections  # noqa: F401 - used by test modules

from .rogue import rogue_host, rogue_postgres, rogue_sniffer  # noqa: F401 - fixtures for the transport tests

collect_ignore = ["sample_project"]  # a user's project: run by test_sample_project.py

try:  # what a PyMySQL site does in settings.py, for the MySQL ENGINE's tests (no mysqlclient here)
    import MySQLdb  # noqa: F401
except ImportError:
    try:
        import pymysql

        pymysql.install_as_MySQLdb()
    except ImportError:
        pass

STORAGE = "https://storage.azure.com/.default"
STORAGE_RESOURCE = "https://storage.azure.com"
VAULT = "https://vault.azure.net/.default"
CLIENT_ID = "11111111-2222-3333-4444-555555555555"


# Lanes (pyproject.toml's markers): a test that starts a server process (a stand-in, a rogue host) or real
# workers is "integration"; `make check` runs the rest (the fast lane), `make test` everything.
INTEGRATION_FIXTURES = {
    "azure_postgres_server",
    "azure_redis_server",
    "azure_redis_nonclustered_server",
    "amr",
    "azure_redis_cluster_server",
    "azure_redis_enterprise_server",
    "azure_storage_server",
    "azure_keyvault_server",
    "rogue_host",
}
PROCESS_MODULES = {"test_fleet", "test_outages", "test_demo", "test_sample_project", "test_packaging"}


# Azure Managed Redis's clustering policies and their stand-in fixtures
AMR_POLICIES = {
    "none": "azure_redis_nonclustered",
    "oss": "azure_redis_cluster",
    "enterprise": "azure_redis_enterprise",
}


@pytest.fixture(params=list(AMR_POLICIES))
def amr(request: pytest.FixtureRequest) -> Any:
    """Azure Managed Redis on each clustering policy (a stand-in following this test's identity
    endpoint)."""
    return request.getfixturevalue(AMR_POLICIES[request.param])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = getattr(item, "module", None)
        name = module.__name__.rsplit(".", 1)[-1] if module is not None else ""
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())) or name in PROCESS_MODULES:
            item.add_marker(pytest.mark.integration)
    # Longest first (the once-lane tests, then the slow ones): under xdist's worksteal they start at once
    # and the short tests fill the gaps, instead of a 2-minute test starting last and running alone.
    items.sort(
        key=lambda item: 0 if item.get_closest_marker("once") else 1 if item.get_closest_marker("slow") else 2
    )


def pytest_report_header() -> str:
    import django

    return f"django: {django.get_version()}"


def claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def fast_credential(**kwargs: Any) -> ManagedIdentityCredential:
    """The real ManagedIdentityCredential with retries and timeouts short enough for tests."""
    options: dict[str, Any] = {
        "retry_total": 1,
        "retry_backoff_factor": 0.01,
        "connection_timeout": 0.5,
        "read_timeout": 1,
    }
    options.update(kwargs)
    return ManagedIdentityCredential(**options)


@pytest.fixture
def make_provider(azure_imds: Any) -> Iterator[Callable[..., TokenProvider]]:
    """Build TokenProviders over a fast real ManagedIdentityCredential; closed after the test."""
    made: list[TokenProvider] = []

    def make(scope: str = STORAGE, credential: Any = None, **options: Any) -> TokenProvider:
        options.setdefault("timeout", 5)
        options.setdefault("retry_base", 0.1)
        options.setdefault("retry_cap", 0.5)
        provider = TokenProvider(credential or fast_credential(), scope, identity="test identity", **options)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        provider.close()


class LoopbackServer:
    """A real TCP server on loopback that never answers: it keeps each connection open (``accepted``
    counts the tries) or, with ``hang_up``, reads what the client sends first and closes it. With
    ``tls`` (a :class:`~django_azure_mi.testing.certs.TLSFiles`) it completes a TLS handshake first, so
    an HTTPS client sends its request (and its bearer token) before the server hangs up."""

    def __init__(self, hang_up: bool = False, tls: Any = None) -> None:
        import socket
        import ssl

        self.hang_up = hang_up
        self.context = None
        if tls is not None:
            self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.context.load_cert_chain(tls.cert_file, tls.key_file)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(32)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[Any] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)
            if self.hang_up:
                threading.Thread(target=self._hang_up, args=(conn,), daemon=True).start()

    def _hang_up(self, conn: Any) -> None:
        try:
            conn.settimeout(5)
            if self.context is not None:
                conn = self.context.wrap_socket(conn, server_side=True)
            conn.recv(65536)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


class ChallengeServer:
    """An HTTPS server on loopback that answers every request 401 with ``challenge`` as its
    ``WWW-Authenticate`` header, recording each ``Authorization`` header it was sent (``received``)."""

    def __init__(self, tls: Any, challenge: str) -> None:
        import ssl
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        received: list[str] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                if self.headers.get("Authorization"):
                    received.append(self.headers["Authorization"])
                self.send_response(401)
                self.send_header("WWW-Authenticate", challenge)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls.cert_file, tls.key_file)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def run_threads(n: int, target: Callable[[], Any], timeout: float = 30) -> list[Any]:
    """Run ``target`` in ``n`` threads started together; return results (exceptions as values)."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def work(i: int) -> None:
        barrier.wait()
        try:
            results[i] = target()
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "threads did not finish"
    return results


def run_fresh(args: list[str], cwd: Any, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python *args`` in a fresh process, without our tests' settings module (it has its own)."""
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def in_child(fn) -> dict:
    """Fork; run ``fn`` in the child; return the JSON it produced (or the child's error)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
        try:
            result = {"ok": True, **fn()}
        except BaseException as exc:
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        with os.fdopen(write_fd, "w") as out:
            json.dump(result, out)
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as inp:
        data = inp.read()
    os.waitpid(pid, 0)
    return json.loads(data)


@pytest.fixture
def use_databases(azure_databases):
    """Our tests' name for the shipped ``azure_databases`` fixture."""
    return azure_databases


@pytest.fixture(autouse=True)
def one_heavy_test_at_a_time(request):
    """Tests marked ``heavy`` (a websocket chat, a real Celery or RQ worker through token rotations) run one
    at a time across pytest-xdist's workers and ``make test``'s two chains (a lock file): each keeps the
    CPUs busy and judges timing (re-AUTH before expiry, delivery within channels_redis's expiry), and
    several at once on CI's two CPUs starved each other (a chat's last messages late, a beat tick late, a
    re-AUTH after its token expired). Production has no such neighbours; the chats also pass beside three
    CPU-burning processes (docs/channels.md)."""
    if request.node.get_closest_marker("heavy") is None:
        yield
        return
    import fcntl
    import tempfile

    lock = Path(tempfile.gettempdir()) / "django-azure-mi-heavy-tests.lock"
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
