"""A local stand-in for the Azure identity endpoint (IMDS and App Service flavours).

A real HTTP server on 127.0.0.1 that the real ``azure.identity.ManagedIdentityCredential`` talks to:

* IMDS: ``GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=R[&client_id=…]`` with header
  ``Metadata: true`` (400 without it); reached through ``AZURE_POD_IDENTITY_AUTHORITY_HOST``.
* App Service / Container Apps: ``GET {IDENTITY_ENDPOINT}?api-version=2019-08-01&resource=R`` with header
  ``X-IDENTITY-HEADER: {IDENTITY_HEADER}``.

It issues RS256 JWTs shaped like Entra's (aud = resource, iss ``https://sts.windows.net/<tid>/``, oid,
tid, iat, nbf, exp, appid, uti); one object id per identity: the system-assigned one and each user-assigned
one the host has (``add_identity``; any other client id gets Azure's 400 "Identity not found" unless the
emulator is ``lenient``). Tests count
requests per resource, script faults (status codes with Retry-After, latency, hangs, malformed JSON, refused
connections), hold a response until released, and subscribe to every issued token (the Postgres/Redis
stand-ins accept exactly the tokens it issued).

    with IMDSEmulator(ttl=3600) as imds, imds.patched_environ():
        ManagedIdentityCredential().get_token("https://storage.azure.com/.default")
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..core.clock import SYSTEM, Clock
from .base import StandIn
from .faults import Fault, Faults, Hold
from .identities import Identities, Identity
from .minting import IssuedToken, Minting

__all__ = ["APP_SERVICE_PATH", "IMDS_PATH", "Fault", "Hold", "IMDSEmulator", "Identity", "IssuedToken"]

IMDS_PATH = "/metadata/identity/oauth2/token"
APP_SERVICE_PATH = "/msi/token"

# Variables that make azure-identity pick another managed-identity flavour; cleared while patched.
_IDENTITY_ENV = (
    "AZURE_POD_IDENTITY_AUTHORITY_HOST",
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "IDENTITY_SERVER_THUMBPRINT",
    "IMDS_ENDPOINT",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "AZURE_FEDERATED_TOKEN_FILE",
)


class IMDSEmulator(Identities, Minting, Faults, StandIn):
    """The identity endpoint on 127.0.0.1 (see module docstring). Context manager; thread-safe. Its concerns
    live apart: identities (:mod:`.identities`), tokens (:mod:`.minting`), faults (:mod:`.faults`); this
    class serves HTTP and applies Azure's limits."""

    def __init__(
        self,
        *,
        ttl: float = 3600,
        mode: str = "imds",
        tenant_id: str | None = None,
        known_client_ids: list[str] | None = None,
        lenient: bool = False,
        system_assigned: bool = True,
        port: int = 0,
        limits: bool = True,
        clock: Clock = SYSTEM,
    ) -> None:
        """``limits`` (on by default, as on Azure): the identity endpoint's limits per VM
        (``max_concurrent`` = 5 requests at once, ``max_per_second`` = 20 a second); past them the answer
        is 429 with ``Retry-After`` (``throttled`` counts them). Faults come on top. ``limits=False`` (or
        ``emulator.limits = False``) lifts them, for a test that measures something else. ``clock``: what
        tokens are stamped with (a :class:`~django_azure_mi.testing.clock.FakeClock` beside a runtime on the
        same fake clock)."""
        if mode not in ("imds", "app_service"):
            raise ValueError("mode must be 'imds' or 'app_service'")
        self.ttl = ttl
        self.mode = mode
        self.tenant_id = tenant_id or str(uuid.uuid4())
        self.identity_header = uuid.uuid4().hex
        self.system_assigned = system_assigned
        self.latency = 0.0  # added to every response
        # Azure's clock minus this host's, in seconds: tokens are stamped (iat/nbf/exp, expires_on) and
        # judged by the attached stand-ins on Azure's clock; expires_in stays a duration, as on Azure.
        self.clock_skew = 0.0
        self.clock = clock
        self._key_lock = threading.Lock()
        self._key: Any = None  # the signing key, made on first use (Minting)
        self.limits = limits
        self.max_concurrent, self.max_per_second = 5, 20
        self.throttled = 0
        self._in_flight = 0
        self._recent: collections.deque[float] = collections.deque()
        # As Azure: a client id that is not one of the host's identities (add_identity, known_client_ids)
        # gets 400 "Identity not found"; ``lenient`` makes up an identity for any client id instead.
        self._strict = not lenient
        self._lock = threading.Lock()
        self._identities: dict[str | None, Identity] = {None: Identity(str(uuid.uuid4()), None, "app-system")}
        for client_id in known_client_ids or ():
            self.add_identity(client_id)
        self._script: collections.deque[Fault] = collections.deque()
        self._always: Fault | None = None
        self._callbacks: list[Callable[[IssuedToken], None]] = []
        self._stopping = threading.Event()
        self._release_hangs = threading.Event()
        self.requests: collections.Counter[str] = collections.Counter()
        self.issued: list[IssuedToken] = []
        self.fault_bytes: list[int] = []  # bytes each endless / trickle answer sent before the client left
        self._port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()

    # ------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """Base URL (the value for ``AZURE_POD_IDENTITY_AUTHORITY_HOST``)."""
        return f"http://127.0.0.1:{self._port}"

    @property
    def endpoint(self) -> str:
        """The token URL of the configured flavour."""
        return self.url + (IMDS_PATH if self.mode == "imds" else APP_SERVICE_PATH)

    def start(self) -> IMDSEmulator:
        self._stopping.clear()
        self._serve()
        return self

    def _serve(self) -> None:
        server = _Server(("127.0.0.1", self._port), _Handler)
        server.daemon_threads = True
        server.block_on_close = False
        server.emulator = self  # type: ignore[attr-defined]
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="imds-emulator", daemon=True)
        self._thread.start()

    def _unserve(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:  # keep-alive connections die too, as in a real outage
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self._stopping.set()
        self._unserve()

    def pause(self) -> None:
        """Stop listening: clients get "connection refused" until :meth:`resume`."""
        self._unserve()

    def resume(self) -> None:
        """Listen again on the same port."""
        if self._server is None:
            self._serve()

    # ------------------------------------------------------------------ pointing azure-identity here

    def environ(self) -> dict[str, str | None]:
        """Environment for azure-identity (None = unset): IMDS via ``AZURE_POD_IDENTITY_AUTHORITY_HOST``,
        or App Service via ``IDENTITY_ENDPOINT``/``IDENTITY_HEADER``."""
        env: dict[str, str | None] = dict.fromkeys(_IDENTITY_ENV)
        if self.mode == "imds":
            env["AZURE_POD_IDENTITY_AUTHORITY_HOST"] = self.url
        else:
            env["IDENTITY_ENDPOINT"] = self.endpoint
            env["IDENTITY_HEADER"] = self.identity_header
        return env

    @contextlib.contextmanager
    def patched_environ(self) -> Iterator[None]:
        """Set :meth:`environ` in ``os.environ`` for the duration of the block."""
        saved = {name: os.environ.get(name) for name in self.environ()}
        try:
            _apply_env(self.environ())
            yield
        finally:
            _apply_env(saved)

    # ------------------------------------------------------------------ serving

    def _handle(self, handler: _Handler) -> None:
        url = urlsplit(handler.path)
        params = {k: v[-1] for k, v in parse_qs(url.query).items()}
        refusal = _refusal(self.mode, self.identity_header, url.path, handler.headers, params)
        if refusal is not None:
            return handler.reply(*refusal)
        resource = params.get("resource", "")
        if not resource.startswith("https://"):
            return handler.reply(
                400, {"error": "invalid_resource", "error_description": "resource must be an https URI"}
            )
        with self._lock:
            self.requests[resource] += 1
            if self._over_limits():
                self.throttled += 1
                over = True
            else:
                self._in_flight += 1
                over = False
        if over:
            body = {"error": "too_many_requests", "error_description": "Too many requests: retry later"}
            return handler.reply(429, body, {"Retry-After": "1"})
        try:
            return self._answer(handler, params, resource)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _over_limits(self) -> bool:
        """Called with the lock held: is this request past Azure's limits (and if not, count it)?"""
        if not self.limits:
            return False
        now = self.clock.monotonic()  # a FakeClock makes the window exact
        while self._recent and self._recent[0] <= now - 1.0:
            self._recent.popleft()
        if self._in_flight >= self.max_concurrent or len(self._recent) >= self.max_per_second:
            return True
        self._recent.append(now)
        return False

    def _answer(self, handler: _Handler, params: dict[str, str], resource: str) -> None:
        if self._play_fault(handler, self._next_fault(), self.latency):
            return None
        identity = self._find_identity(params)
        if identity is None:
            return handler.reply(400, {"error": "invalid_request", "error_description": "Identity not found"})
        issued = self._make_token(resource, identity, None, {})
        with self._lock:
            self.issued.append(issued)
            callbacks = list(self._callbacks)
        for callback in callbacks:
            callback(issued)
        ttl = issued.expires_on - issued.issued_at
        answer: dict[str, str] = {
            "access_token": issued.token,
            "client_id": identity.client_id or "system",
            "expires_on": str(issued.expires_on),
            "resource": resource,
            "token_type": "Bearer",
        }
        if self.mode == "imds":
            answer.update(expires_in=str(ttl), ext_expires_in=str(ttl), not_before=str(issued.issued_at))
        return handler.reply(200, answer)


def _refusal(
    mode: str, identity_header: str, path: str, headers: Any, params: dict[str, str]
) -> tuple[int, dict[str, Any]] | None:
    """What the endpoint answers to a request of the wrong shape (path, header, api-version), as Azure's
    does; None for a well-formed one."""
    if mode == "imds":
        if path != IMDS_PATH:
            return 404, {"error": "not_found"}
        if headers.get("Metadata", "").lower() != "true":
            return 400, {
                "error": "invalid_request",
                "error_description": "Required metadata header not specified",
            }
        expected_version = "2018-02-01"
    else:
        if path != APP_SERVICE_PATH:
            return 404, {"error": "not_found"}
        if headers.get("X-IDENTITY-HEADER") != identity_header:
            return 401, {"statusCode": 401, "message": "Missing or wrong X-IDENTITY-HEADER"}
        expected_version = "2019-08-01"
    if params.get("api-version") != expected_version:
        return 400, {
            "error": "invalid_request",
            "error_description": f"api-version must be {expected_version}",
        }
    return None


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the default backlog (5) drops a burst's connects, which then retry after 1 s


class _Handler(BaseHTTPRequestHandler):
    server_version = "IMDS-emulator/1.0"
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        emulator: IMDSEmulator = self.server.emulator  # type: ignore[attr-defined]
        with emulator._lock:
            emulator._connections.add(self.connection)

    def finish(self) -> None:
        emulator: IMDSEmulator = self.server.emulator  # type: ignore[attr-defined]
        with emulator._lock:
            emulator._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def do_GET(self) -> None:
        emulator: IMDSEmulator = self.server.emulator  # type: ignore[attr-defined]
        try:
            emulator._handle(self)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def reply(self, status: int, body: dict[str, Any] | str, headers: dict[str, str] | None = None) -> None:
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: request lines carry no secrets, but tests don't need the noise


def _apply_env(env: dict[str, str | None]) -> None:
    for name, value in env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
