"""A token-checking Redis that behaves like Azure Cache for Redis / Azure Managed Redis with Entra auth.

``redis-server`` on a free loopback port with ACLs: the default user is off, ``admin`` is the harness's, and
each registered identity has a user named by its object id whose passwords are exactly the unexpired tokens
the :class:`~django_azure_mi.testing.imds.IMDSEmulator` issued to it for the Redis scope (added when issued,
removed when they expire).

In front of it, an **enforcer**: a TLS-terminating, RESP-aware proxy that reads every ``AUTH`` and
``HELLO … AUTH`` a client sends, remembers the ``exp`` of the token the connection last authenticated
with, and closes the connection when that token expires - as Azure does unless the client re-AUTHs with a
fresh token in time.
``closed_connections`` counts the connections it had to close.

    with RedisStandIn() as redis:
        redis.add_identity(imds.object_id())
        redis.attach(imds)
        LOCATION = redis.url            # rediss://127.0.0.1:PORT/0 ; CA in redis.ca_file
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import uuid
import weakref
from typing import Any

from .base import Missing, StandIn
from .certs import TLSFiles, make_tls_files
from .imds import IMDSEmulator
from .net import free_port
from .redisproxy import Enforcer, _close, _grant

REDIS_RESOURCE = "https://redis.azure.com"


class RedisStandIn(Enforcer, StandIn):
    """See the module docstring. Context manager; thread-safe."""

    # "single": Azure Cache for Redis; "none", "oss", "enterprise": Azure Managed Redis's clustering policies
    policy = "single"
    server_args: tuple[str, ...] = ()  # redis-server options of this policy

    def __init__(self, *, resource: str = REDIS_RESOURCE, tls: bool = True) -> None:
        self.resource = resource
        self.tls_enabled = tls
        self.host = "127.0.0.1"
        self.admin_password = uuid.uuid4().hex
        self.closed_connections = 0  # connections the enforcer closed because their token expired
        self.closures: list[str] = []  # the last command each of those sent (BRPOP, SUBSCRIBE, GET…)
        self._last_command: weakref.WeakKeyDictionary[socket.socket, str] = weakref.WeakKeyDictionary()
        self.auth_count = 0  # AUTH/HELLO-AUTH commands seen with a token
        self._lock = threading.Lock()
        self._users: set[str] = set()
        self._conns: dict[socket.socket, float] = {}  # client socket -> expiry of its token (inf: none)
        self._upstreams: dict[socket.socket, socket.socket] = {}  # client socket -> its redis-server one
        self._tmp: str | None = None
        self._server: subprocess.Popen[bytes] | None = None
        self._listeners: list[socket.socket] = []
        self._stopping = threading.Event()
        self._imds: IMDSEmulator | None = None
        self._tokens: dict[tuple[str, str], float] = {}  # (user, token) accepted until its exp
        self.redis_port = 0
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """The enforcer's URL for clients (``rediss://`` unless ``tls=False``)."""
        return f"{'rediss' if self.tls_enabled else 'redis'}://{self.host}:{self.port}/0"

    def cache_settings(self, backend: str = "django-redis", **identity: Any) -> dict[str, Any]:
        """A ``CACHES`` entry that signs in to this stand-in: ``backend`` "django-redis" (django-redis with
        our connection factory) or "builtin" (our subclass of Django's RedisCache); ``identity``: the
        ``MANAGED_IDENTITY`` option (``USERNAME``, ``CLIENT_ID``...)."""
        ca = self.ca_file if self.tls_enabled else None
        return cache_entry(self.url, ca, self.policy, backend, identity)

    def celery_settings(
        self, broker_db: int = 0, result_db: int | None = None, **identity: Any
    ) -> dict[str, Any]:
        """Celery settings (without the ``CELERY_`` prefix) for a broker and result backend on this
        stand-in with our transport and backend; ``identity``: the ``managed_identity`` option. The
        results go to database 1 on Azure Cache for Redis, to database 0 (the only one) on AMR, where the
        options say ``cluster: "auto"`` as an AMR host name would."""
        ca = self.ca_file if self.tls_enabled else None
        return celery_entries(self.url, ca, self.policy, identity, broker_db, result_db)

    def start(self) -> RedisStandIn:
        self._tmp = tempfile.mkdtemp(prefix="django-azure-mi-redis-")
        self.tls = make_tls_files(os.path.join(self._tmp, "tls"))
        for attempt in range(1, 4):
            self.redis_port = free_port()
            try:
                self._start_server()
                break
            except PortTaken:
                if attempt == 3:
                    raise
        self._context = server_context(self.tls) if self.tls_enabled else None
        self.port = self._front(self.redis_port)
        threading.Thread(target=self._expiry_loop, name="redis-enforcer-expiry", daemon=True).start()
        return self

    def _start_server(self) -> None:
        assert self._tmp
        self._server = launch_redis(self._tmp, self.redis_port, *self.server_args)
        bootstrap_acl(self.host, self.redis_port, self.admin_password)

    def _stop_server(self) -> None:
        if self._server is not None:
            self._server.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._server.wait(5)
            if self._server.poll() is None:
                self._server.kill()

    def restart(self, downtime: float = 1.0, *, keep_data: bool = False) -> None:
        """Restart the cache as a patch or failover does: every client connection drops, new ones fail for
        ``downtime`` seconds, and the server comes back on the same port, empty (a tier without a replica)
        or, with ``keep_data``, with the data it held (a replicated tier's failover). Identities keep
        their access and every unexpired token is still accepted (Azure checks signatures, not a list)."""
        if keep_data:
            for admin in self.admins():
                admin.save()  # loaded again at start (the server's --dir)
                admin.close()
        self._stop_server()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            _close(conn)
        time.sleep(downtime)
        self._start_server()
        admin = self.admin()
        with self._lock:
            users = set(self._users)
            tokens = [(user, token) for (user, token) in self._tokens]
        for user in users:
            _grant(admin, user)
        for user, token in tokens:
            admin.execute_command("ACL", "SETUSER", user, f">{token}")

    def stop(self) -> None:
        self._stopping.set()
        self._close_listeners()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            _close(conn)
        self._stop_server()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)

    # ------------------------------------------------------------------ ACL users and tokens

    def admin(self) -> Any:
        """A redis-py client to the real server as ``admin`` (not through the enforcer)."""
        import redis

        return redis.Redis(
            host=self.host, port=self.redis_port, username="admin", password=self.admin_password
        )

    def reset(self) -> None:
        """Between tests: drop every token password, close every client, empty every node, zero the
        counters."""
        with self._lock:
            self._tokens.clear()
            users = list(self._users)
            conns = list(self._conns)
        for admin in self.admins():
            for user in users:
                admin.execute_command("ACL", "SETUSER", user, "resetpass")
            admin.flushall()
        for conn in conns:
            _close(conn)
        self.reset_counters()


class RedisNonClusteredStandIn(RedisStandIn):
    """Azure Managed Redis with the **Non-clustered policy**: one endpoint, no slot rules, database 0 only
    (``SELECT 1`` answers ``ERR DB index is out of range``, as AMR does)."""

    policy = "none"
    server_args = ("--databases", "1")


POLICIES = ("single", "none", "oss", "enterprise")


def cache_entry(
    url: str, ca_file: str | None, policy: str, backend: str = "django-redis", identity: Any = None
) -> dict[str, Any]:
    """A ``CACHES`` entry for a stand-in at ``url`` (see :meth:`RedisStandIn.cache_settings`)."""
    identity = dict(identity or {})
    tls = {"ssl_ca_certs": ca_file} if ca_file else {}
    auto = {"CLUSTER": "auto"} if policy != "single" else {}  # as on an AMR host: asked once
    if backend == "django-redis":
        options = {
            "CONNECTION_FACTORY": "django_azure_mi.cache.EntraConnectionFactory",
            "CLIENT_CLASS": "django_azure_mi.cache.EntraClient",
            "MANAGED_IDENTITY": identity,
            "CONNECTION_POOL_KWARGS": tls,
            **auto,
        }
        return {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": url, "OPTIONS": options}
    if backend != "builtin":
        raise ValueError("backend is 'django-redis' or 'builtin'")
    return {
        "BACKEND": "django_azure_mi.cache.RedisCache",
        "LOCATION": url,
        "OPTIONS": {"MANAGED_IDENTITY": identity, **tls, **{k.lower(): v for k, v in auto.items()}},
    }


def celery_entries(
    url: str,
    ca_file: str | None,
    policy: str,
    identity: Any = None,
    broker_db: int = 0,
    result_db: int | None = None,
) -> dict[str, Any]:
    """Celery's settings (without ``CELERY_``) for a stand-in at ``url`` (see
    :meth:`RedisStandIn.celery_settings`)."""
    from ..celery import TRANSPORT, result_backend

    tls = {"ssl_ca_certs": ca_file} if ca_file else {}
    base = url.rsplit("/", 1)[0]
    if result_db is None:
        result_db = 1 if policy == "single" else 0
    options: dict[str, Any] = {"managed_identity": dict(identity)} if identity else {}
    if policy != "single":
        options["cluster"] = "auto"
    return {
        "broker_url": f"{base}/{broker_db}",
        "broker_transport": TRANSPORT,
        "broker_transport_options": dict(options),
        "broker_use_ssl": tls or None,
        "result_backend": result_backend(f"{base}/{result_db}"),
        "result_backend_transport_options": dict(options),
        "redis_backend_use_ssl": tls or None,
    }


def channel_layer_entry(url: str, ca_file: str | None, policy: str) -> dict[str, Any]:
    """A ``CHANNEL_LAYERS`` entry (our core layer) for a stand-in at ``url``."""
    host: dict[str, Any] = {"address": url, **({"ssl_ca_certs": ca_file} if ca_file else {})}
    config: dict[str, Any] = {"hosts": [host], **({"cluster": "auto"} if policy != "single" else {})}
    return {"BACKEND": "django_azure_mi.channels.RedisChannelLayer", "CONFIG": config}


def redis_stand_in(policy: str = "single") -> RedisStandIn:
    """A Redis stand-in (not started) for ``policy``: "single" (Azure Cache for Redis), or one of Azure
    Managed Redis's clustering policies, "none" (Non-clustered), "oss" or "enterprise"."""
    if policy == "single":
        return RedisStandIn()
    if policy == "none":
        return RedisNonClusteredStandIn()
    if policy == "oss":
        from .rediscluster import RedisClusterStandIn

        return RedisClusterStandIn()
    if policy == "enterprise":
        from .redisenterprise import RedisEnterpriseStandIn

        return RedisEnterpriseStandIn()
    raise ValueError(f"unknown Redis policy {policy!r}: choose from {', '.join(POLICIES)}")


class PortTaken(RuntimeError):
    """Another process took the free port picked for a redis-server before the server bound it (the stand-ins
    of parallel test workers pick ports at once): pick again."""


def launch_redis(directory: str, port: int, *args: str) -> subprocess.Popen[bytes]:
    """redis-server on 127.0.0.1:``port`` keeping nothing on disk (its files in ``directory``), with
    ``args``; returns once it accepts connections. Raises :class:`PortTaken` when ``port`` (or a cluster bus
    port in ``args``) turns out to be another process's: a server that answers there but is not this one
    (its ``process_id`` differs, or its default user is already off) is never taken for it."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(binary):
        raise Missing(
            "the Redis stand-in needs redis-server 7: install Redis (Debian: redis-server); or leave "
            "redis out (--services)."
        )
    os.makedirs(directory, exist_ok=True)
    log = os.path.join(directory, "redis.log")
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    command += ["--dir", directory, "--logfile", log, "--maxclients", "1000", *args]
    server = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        answering = _answering_pid(port)
        if answering == server.pid:
            return server
        exited = server.poll() is not None
        if exited or time.monotonic() > deadline:
            server.kill()
            server.wait()
            if answering is not None or "Address already in use" in _read(log):
                for leftover in (log, os.path.join(directory, "nodes.conf")):  # the next attempt starts clean
                    with contextlib.suppress(OSError):
                        os.remove(leftover)
                raise PortTaken(f"port {port} (or the cluster bus port) was taken by another process")
            raise RuntimeError(f"redis-server did not start (log: {directory}/redis.log)")
        time.sleep(0.05)


def _answering_pid(port: int) -> int | None:
    """The process id of the redis-server answering on ``port`` while its default user is still open (a
    server this harness has just started); -1 for a server that is someone else's; None when nothing
    answers."""
    import redis

    probe = redis.Redis(host="127.0.0.1", port=port, protocol=2, socket_timeout=2, socket_connect_timeout=1)
    try:
        return int(probe.info("server")["process_id"])
    except (redis.AuthenticationError, redis.ResponseError):  # NOAUTH: another stand-in's, locked down
        return -1
    except (redis.ConnectionError, redis.TimeoutError):
        return None
    finally:
        probe.close()


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            return file.read()
    except OSError:
        return ""


def bootstrap_acl(host: str, port: int, admin_password: str) -> None:
    """The harness's ``admin`` user, and the default user off (as Azure has it: no anonymous access)."""
    import redis

    bootstrap = redis.Redis(host=host, port=port)  # default user, no password, once
    admin = ("ACL", "SETUSER", "admin", "on", f">{admin_password}", "~*", "&*", "+@all")
    bootstrap.execute_command(*admin)  # type: ignore[no-untyped-call]
    bootstrap.execute_command("ACL", "SETUSER", "default", "off", "resetpass", "nopass")  # type: ignore[no-untyped-call]
    bootstrap.close()


def server_context(tls: TLSFiles) -> ssl.SSLContext:
    """The enforcer's TLS: the stand-in's certificate for 127.0.0.1 and localhost."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert_file, tls.key_file)
    return context
