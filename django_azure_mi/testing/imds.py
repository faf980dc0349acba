"""A local stand-in for the Azure identity endpoint (IMDS and App Service flavours).

A real HTTP server on 127.0.0.1 that the real ``azure.identity.ManagedIdentityCredential`` talks to:

* IMDS: ``GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=R[&client_id=…]`` with header
  ``Metadata: true`` (400 without it); reached through ``AZURE_POD_IDENTITY_AUTHORITY_HOST``.
* App Service / Container Apps: ``GET {IDENTITY_ENDPOINT}?api-version=2019-08-01&resource=R`` with header
  ``X-IDENTITY-HEADER: {IDENTITY_HEADER}``.

It issues RS256 JWTs shaped like Entra's (aud = resource, iss ``https://sts.windows.net/<tid>/``, oid,
tid, iat, nbf, exp, appid, uti); one object id per identity (system-assigned, one per client id). Tests count
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
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt

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

_key_lock = threading.Lock()
_signing_key: Any = None


def _private_key() -> Any:
    """One RSA key per process (generating one costs ~50 ms)."""
    global _signing_key
    with _key_lock:
        if _signing_key is None:
            from cryptography.hazmat.primitives.asymmetric import rsa

            _signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return _signing_key


def signing_public_key() -> Any:
    """The public key the emulator's tokens verify against (what a resource checks them with)."""
    return _private_key().public_key()


@dataclass(frozen=True)
class Identity:
    """A managed identity known to the emulator."""

    object_id: str
    client_id: str | None  # None: the system-assigned identity
    name: str

    @property
    def resource_id(self) -> str:
        sub = "00000000-0000-0000-0000-000000000000"
        if self.client_id is None:
            return f"/subscriptions/{sub}/resourcegroups/local/providers/Microsoft.Web/sites/{self.name}"
        return (
            f"/subscriptions/{sub}/resourcegroups/local/providers/Microsoft.ManagedIdentity/"
            f"userAssignedIdentities/{self.name}"
        )


@dataclass(frozen=True)
class IssuedToken:
    """A token the emulator handed out. Its repr hides the token."""

    token: str = field(repr=False)
    resource: str
    identity: Identity
    tenant_id: str
    issued_at: int
    expires_on: int

    def __repr__(self) -> str:
        return (
            f"IssuedToken(resource={self.resource!r}, oid={self.identity.object_id}, "
            f"expires_on={self.expires_on}, token=<{len(self.token)} chars>)"
        )


@dataclass
class Fault:
    """What the emulator does instead of answering normally. Build with the class methods."""

    kind: str
    status: int = 200
    retry_after: float | None = None
    seconds: float = 0.0
    body: str | None = None
    hold: Hold | None = None
    limit: int = 0  # endless: bytes at most
    duration: float = 60.0  # trickle: seconds at most

    @classmethod
    def error(cls, status: int, retry_after: float | None = None, body: str | None = None) -> Fault:
        """Answer ``status`` (404, 410, 429, 500, …), optionally with ``Retry-After``."""
        return cls("status", status=status, retry_after=retry_after, body=body)

    @classmethod
    def latency(cls, seconds: float) -> Fault:
        """Answer normally after ``seconds``."""
        return cls("latency", seconds=seconds)

    @classmethod
    def hang(cls) -> Fault:
        """Never answer (until the emulator stops or ``release_hangs()``); the client must time out."""
        return cls("hang")

    @classmethod
    def endless(cls, limit: int = 256 * 1024 * 1024) -> Fault:
        """Answer 200 and stream a body that never ends (up to ``limit`` bytes, or until the client hangs
        up); ``IMDSEmulator.fault_bytes`` records how much was sent."""
        return cls("endless", limit=limit)

    @classmethod
    def trickle(cls, seconds_per_byte: float = 0.1, duration: float = 60.0) -> Fault:
        """A slowloris: the answer's status line, headers and body one byte per ``seconds_per_byte``, for
        ``duration`` seconds at most; ``IMDSEmulator.fault_bytes`` records how much was sent."""
        return cls("trickle", seconds=seconds_per_byte, duration=duration)

    @classmethod
    def malformed(cls) -> Fault:
        """Answer 200 with a body that is not JSON."""
        return cls("malformed")


class Hold:
    """Keeps one request waiting until :meth:`release` (see :meth:`IMDSEmulator.hold`)."""

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self._released = threading.Event()

    def wait_arrived(self, timeout: float = 10.0) -> bool:
        return self.arrived.wait(timeout)

    def release(self) -> None:
        self._released.set()


class IMDSEmulator:
    """The identity endpoint on 127.0.0.1 (see module docstring). Context manager; thread-safe."""

    def __init__(
        self,
        *,
        ttl: float = 3600,
        mode: str = "imds",
        tenant_id: str | None = None,
        known_client_ids: list[str] | None = None,
        system_assigned: bool = True,
        port: int = 0,
        limits: bool = True,
    ) -> None:
        """``limits`` (on by default, as on Azure): the identity endpoint's limits per VM
        (``max_concurrent`` = 5 requests at once, ``max_per_second`` = 20 a second); past them the answer
        is 429 with ``Retry-After`` (``throttled`` counts them). Faults come on top. ``limits=False`` (or
        ``emulator.limits = False``) lifts them, for a test that measures something else."""
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
        self.limits = limits
        self.max_concurrent, self.max_per_second = 5, 20
        self.throttled = 0
        self._in_flight = 0
        self._recent: collections.deque[float] = collections.deque()
        self._strict = known_client_ids is not None
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

    def __enter__(self) -> IMDSEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

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

    # ------------------------------------------------------------------ identities and tokens

    def add_identity(self, client_id: str, object_id: str | None = None, name: str | None = None) -> Identity:
        """Register a user-assigned identity (any client id is accepted unless ``known_client_ids``)."""
        with self._lock:
            identity = Identity(object_id or str(uuid.uuid4()), client_id, name or f"app-{client_id[:8]}")
            self._identities[client_id] = identity
            return identity

    def adopt(self, other: IMDSEmulator) -> None:
        """Take over ``other``'s tenant and identities (object ids): this endpoint then speaks for the same
        VM, as if its identity endpoint had restarted, so its tokens carry the same ``oid`` and ``tid``.
        The pytest plugin does this when a session-wide emulator is running (``azure_session_imds``)."""
        with other._lock:
            identities = dict(other._identities)
        with self._lock:
            self.tenant_id = other.tenant_id
            self._identities.update(identities)

    def identity(self, client_id: str | None = None) -> Identity:
        """The identity for ``client_id`` (None: system-assigned), created on first use."""
        with self._lock:
            found = self._identities.get(client_id)
        return found or self.add_identity(client_id)  # type: ignore[arg-type]

    def object_id(self, client_id: str | None = None) -> str:
        return self.identity(client_id).object_id

    def _find_identity(self, params: dict[str, str]) -> Identity | None:
        client_id = params.get("client_id")
        object_id = params.get("object_id") or params.get("principal_id")
        res_id = params.get("msi_res_id") or params.get("mi_res_id")
        with self._lock:
            if client_id:
                found = self._identities.get(client_id)
                if found is None and not self._strict:
                    found = Identity(str(uuid.uuid4()), client_id, f"app-{client_id[:8]}")
                    self._identities[client_id] = found
                return found
            if object_id or res_id:
                for candidate in self._identities.values():
                    if object_id == candidate.object_id or res_id == candidate.resource_id:
                        return candidate
                return None
            return self._identities[None] if self.system_assigned else None

    def mint(
        self, resource: str, client_id: str | None = None, *, ttl: float | None = None, **claims: Any
    ) -> IssuedToken:
        """Make a token directly (no HTTP, not counted, no callbacks): for crafting bad tokens in tests.
        ``claims`` override the defaults (e.g. ``aud=...``, ``exp=...``)."""
        return self._make_token(resource, self.identity(client_id), ttl, claims)

    def now(self) -> float:
        """Azure's clock: this host's plus ``clock_skew``."""
        return time.time() + self.clock_skew

    def _make_token(
        self, resource: str, identity: Identity, ttl: float | None, extra: dict[str, Any]
    ) -> IssuedToken:
        now = int(self.now())
        exp = now + int(self.ttl if ttl is None else ttl)
        claims: dict[str, Any] = {
            "aud": resource,
            "iss": f"https://sts.windows.net/{self.tenant_id}/",
            "iat": now,
            "nbf": now,
            "exp": exp,
            "aio": "local-emulator",
            "appid": identity.client_id or "system-" + identity.object_id[:8],
            "appidacr": "2",
            "idp": f"https://sts.windows.net/{self.tenant_id}/",
            "idtyp": "app",
            "oid": identity.object_id,
            "sub": identity.object_id,
            "tid": self.tenant_id,
            "uti": uuid.uuid4().hex,
            "ver": "1.0",
            "xms_mirid": identity.resource_id,
        }
        claims.update(extra)
        token = jwt.encode(claims, _private_key(), algorithm="RS256", headers={"kid": "local-emulator"})
        return IssuedToken(token, resource, identity, self.tenant_id, now, int(claims["exp"]))

    def on_token(self, callback: Callable[[IssuedToken], None]) -> Callable[[], None]:
        """Call ``callback(issued)`` for every token issued over HTTP, before the response is sent.
        Returns a function that unsubscribes."""
        with self._lock:
            self._callbacks.append(callback)

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return unsubscribe

    # ------------------------------------------------------------------ counters

    def request_count(self, resource: str | None = None) -> int:
        """Token requests received (answered or faulted) for ``resource`` (None: all)."""
        with self._lock:
            return self.requests[resource] if resource else sum(self.requests.values())

    def issued_count(self, resource: str | None = None) -> int:
        with self._lock:
            return sum(1 for t in self.issued if resource is None or t.resource == resource)

    def last_token(self, resource: str | None = None) -> IssuedToken | None:
        with self._lock:
            for issued in reversed(self.issued):
                if resource is None or issued.resource == resource:
                    return issued
        return None

    def reset_counters(self) -> None:
        with self._lock:
            self.requests.clear()
            self.issued.clear()

    # ------------------------------------------------------------------ faults

    def inject(self, *faults: Fault) -> None:
        """Queue faults: each of the next requests gets the next fault, then normal answers resume."""
        with self._lock:
            self._script.extend(faults)

    def fail_always(self, fault: Fault | None) -> None:
        """Apply ``fault`` to every request (after the queued ones) until :meth:`clear_faults`."""
        with self._lock:
            self._always = fault

    def clear_faults(self) -> None:
        with self._lock:
            self._script.clear()
            self._always = None
        self.release_hangs()

    def release_hangs(self) -> None:
        """End every hanging request (their connections are closed without an answer)."""
        self._release_hangs.set()
        self._release_hangs = threading.Event()

    def hold(self) -> Hold:
        """The next request waits until ``hold.release()``; ``hold.arrived`` is set when it comes in."""
        hold = Hold()
        with self._lock:
            self._script.append(Fault("hold", hold=hold))
        return hold

    def _next_fault(self) -> Fault | None:
        with self._lock:
            if self._script:
                return self._script.popleft()
            return self._always

    # ------------------------------------------------------------------ serving

    def _handle(self, handler: _Handler) -> None:
        url = urlsplit(handler.path)
        params = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if self.mode == "imds":
            if url.path != IMDS_PATH:
                return handler.reply(404, {"error": "not_found"})
            if handler.headers.get("Metadata", "").lower() != "true":
                return handler.reply(
                    400,
                    {
                        "error": "invalid_request",
                        "error_description": "Required metadata header not specified",
                    },
                )
            expected_version = "2018-02-01"
        else:
            if url.path != APP_SERVICE_PATH:
                return handler.reply(404, {"error": "not_found"})
            if handler.headers.get("X-IDENTITY-HEADER") != self.identity_header:
                return handler.reply(
                    401, {"statusCode": 401, "message": "Missing or wrong X-IDENTITY-HEADER"}
                )
            expected_version = "2019-08-01"
        if params.get("api-version") != expected_version:
            return handler.reply(
                400,
                {"error": "invalid_request", "error_description": f"api-version must be {expected_version}"},
            )
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
        now = time.monotonic()
        while self._recent and self._recent[0] <= now - 1.0:
            self._recent.popleft()
        if self._in_flight >= self.max_concurrent or len(self._recent) >= self.max_per_second:
            return True
        self._recent.append(now)
        return False

    def _stream_fault(self, handler: _Handler, fault: Fault) -> None:
        """An endless or trickling answer, written raw on the socket, until the client hangs up."""
        sent = 0
        ends = time.monotonic() + fault.duration
        handler.close_connection = True
        try:
            for piece in _stream_fault_bytes(fault):
                if self._stopping.is_set() or time.monotonic() > ends:
                    break
                handler.wfile.write(piece)
                handler.wfile.flush()
                sent += len(piece)
                if fault.kind == "trickle":
                    self._stopping.wait(fault.seconds)
        except OSError:
            pass  # the client hung up: what the fault is for
        finally:
            with self._lock:
                self.fault_bytes.append(sent)

    def _answer(self, handler: _Handler, params: dict[str, str], resource: str) -> None:
        fault = self._next_fault()
        delay = self.latency + (fault.seconds if fault is not None and fault.kind == "latency" else 0.0)
        if delay:
            self._stopping.wait(delay)
        if fault is not None:
            if fault.kind == "status":
                headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
                body = fault.body or json.dumps(
                    {"error": "server_error", "error_description": f"injected HTTP {fault.status}"}
                )
                return handler.reply(fault.status, body, headers)
            if fault.kind == "malformed":
                return handler.reply(200, '{"access_token": "not json')
            if fault.kind in ("endless", "trickle"):
                return self._stream_fault(handler, fault)
            if fault.kind == "hang":
                release = self._release_hangs
                while not (self._stopping.is_set() or release.is_set()):
                    self._stopping.wait(0.05)
                handler.close_connection = True
                return None
            if fault.kind == "hold":
                assert fault.hold is not None
                fault.hold.arrived.set()
                while not (self._stopping.is_set() or fault.hold._released.wait(0.05)):
                    pass

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


def _stream_fault_bytes(fault: Fault) -> Any:
    """The bytes an endless or trickling answer sends, in pieces."""
    if fault.kind == "endless":
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
        yield head
        piece = b" " * 65536
        for _ in range(fault.limit // len(piece)):
            yield piece
        return
    answer = b'{"access_token": "' + b"x" * 100_000 + b'"}'
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(answer)
    for byte in head + answer:
        yield bytes([byte])


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
