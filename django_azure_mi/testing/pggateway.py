"""The sign-in gateway of the Postgres stand-in: Azure's token check in front of a real PostgreSQL.

Azure Database for PostgreSQL accepts *every* unexpired token of a role's identity (many processes hold
different tokens at once); a role password cannot say that. So the stand-in's real server listens on a
private Unix socket only (``trust``), and this gateway owns the TCP port:

1. TLS only (an ``SSLRequest`` is answered ``S``; a plain startup gets Azure's FATAL "SSL connection is
   required"), with the stand-in's certificate;
2. the client's startup message, then a cleartext-password request inside TLS, as Azure asks;
3. the password is checked as Azure checks a token: RS256 signature against the IMDS emulator's key, ``aud``
   = the Postgres resource, ``exp``/``nbf``, and ``oid`` = the object id of the role's identity. Each
   refusal is a FATAL that tells the cases apart (expired, not yet valid, another resource, another
   identity, not a token);
4. on success the same startup message goes to the real server over the socket, and from then on bytes are
   relayed both ways (the server's AuthenticationOk, parameters, key data...). A CancelRequest is relayed
   as is.

Roles without an identity (``set_password``) sign in with that password instead, like Azure's built-in
PostgreSQL authentication.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("django_azure_mi.testing.postgres")

SSL_REQUEST, GSSENC_REQUEST, CANCEL_REQUEST = 80877103, 80877104, 80877102


@dataclass
class Verdict:
    """The outcome of one sign-in: ``None`` message = accepted."""

    message: str | None
    code: str = "28P01"  # invalid_password


def error_response(message: str, code: str) -> bytes:
    fields = b"".join(
        kind + value.encode() + b"\0"
        for kind, value in ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", code), (b"M", message))
    )
    body = fields + b"\0"
    return b"E" + struct.pack("!i", len(body) + 4) + body


def _read_exact(conn: Any, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("client went away")
        data += chunk
    return data


def _read_startup(conn: Any) -> bytes:
    """One length-prefixed startup-phase packet (no type byte), length included."""
    head = _read_exact(conn, 4)
    (length,) = struct.unpack("!i", head)
    if not 8 <= length <= 10000:
        raise ConnectionError("not a Postgres client")
    return head + _read_exact(conn, length - 4)


def _read_message(conn: Any) -> tuple[bytes, bytes]:
    kind = _read_exact(conn, 1)
    (length,) = struct.unpack("!i", _read_exact(conn, 4))
    if not 4 <= length <= 1 << 20:
        raise ConnectionError("message too long")
    return kind, _read_exact(conn, length - 4)


def fingerprint(secret: bytes | str) -> str:
    """A short, one-way name for a token or password (what tests compare; never the value)."""
    import hashlib

    return hashlib.sha256(secret.encode() if isinstance(secret, str) else secret).hexdigest()[:16]


def startup_params(packet: bytes) -> dict[str, str]:
    parts = packet[8:].split(b"\0")
    return {parts[i].decode(): parts[i + 1].decode() for i in range(0, len(parts) - 1, 2) if parts[i]}


class Gateway:
    """Listens on ``host:port``; ``check(user, password) -> Verdict``; ``backend()`` opens a socket to the
    real server. Counts accepted and refused sign-ins."""

    def __init__(
        self,
        host: str,
        port: int,
        context: ssl.SSLContext,
        check: Callable[[str, str], Verdict],
        backend: Callable[[], socket.socket],
    ) -> None:
        self.host, self.port, self.context, self.check, self.backend = host, port, context, check, backend
        self.sign_ins = 0
        self.refusals: list[str] = []
        self.accepted: list[str] = []  # fingerprints (sha256, 16 hex) of the passwords that signed in
        self._lock = threading.Lock()
        self._listener = socket.create_server((host, port), backlog=256)
        self._closed = False
        self._connections: set[Any] = set()
        self._thread = threading.Thread(target=self._serve, name="pg-gateway", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.close()
        self._thread.join(5)

    def _serve(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(
                target=self._session, args=(conn,), name="pg-gateway-session", daemon=True
            ).start()

    def _track(self, *socks: Any) -> None:
        with self._lock:
            self._connections.update(socks)

    def _untrack(self, *socks: Any) -> None:
        with self._lock:
            self._connections.difference_update(socks)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.close()

    def _session(self, conn: socket.socket) -> None:
        client: Any = conn
        server: socket.socket | None = None
        self._track(conn)
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small messages: no Nagle delay
            conn.settimeout(30)
            packet = _read_startup(conn)
            code = struct.unpack("!i", packet[4:8])[0]
            if code == CANCEL_REQUEST:
                server = self.backend()
                server.sendall(packet)
                return
            if code == GSSENC_REQUEST:
                conn.sendall(b"N")
                packet = _read_startup(conn)
                code = struct.unpack("!i", packet[4:8])[0]
            if code != SSL_REQUEST:
                conn.sendall(
                    error_response(
                        "SSL connection is required. Please specify SSL options and retry.", "28000"
                    )
                )
                return
            conn.sendall(b"S")
            client = self.context.wrap_socket(conn, server_side=True)
            self._track(client)
            packet = _read_startup(client)
            user = startup_params(packet).get("user", "")
            client.sendall(b"R" + struct.pack("!ii", 8, 3))  # AuthenticationCleartextPassword
            kind, body = _read_message(client)
            if kind != b"p":
                return
            verdict = self.check(user, body.rstrip(b"\0").decode("utf-8", "replace"))
            if verdict.message is not None:
                with self._lock:
                    self.refusals.append(verdict.message)
                client.sendall(error_response(verdict.message, verdict.code))
                return
            with self._lock:
                self.sign_ins += 1
                self.accepted.append(fingerprint(body.rstrip(b"\0")))
            server = self.backend()
            self._track(server)
            server.sendall(packet)
            client.settimeout(None)
            self._relay(client, server)
        except (OSError, ConnectionError, ssl.SSLError, ValueError):
            pass
        finally:
            self._untrack(*(s for s in (client, conn, server) if s is not None))

    @staticmethod
    def _relay(client: Any, server: socket.socket) -> None:
        """Copy bytes both ways until either side closes (one thread; TLS records drained via pending())."""
        while True:
            ready = [client] if client.pending() else []
            if not ready:
                ready, _, _ = select.select([client, server], [], [])
            for source in ready:
                target = server if source is client else client
                data = source.recv(65536)
                if not data:
                    return
                target.sendall(data)


# ---------------------------------------------------------------------------------------------- tokens


def check_token(
    token: str, *, key: Any, resource: str, oid: str | None, user: str, now: float | None = None
) -> Verdict:
    """Azure's checks of a Postgres sign-in token (see the module docstring)."""
    import jwt

    now = time.time() if now is None else now
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=["RS256"],
            options={"verify_exp": False, "verify_aud": False, "verify_nbf": False, "verify_iat": False},
        )
    except jwt.PyJWTError:
        return Verdict(f'password authentication failed for user "{user}"')
    aud = str(claims.get("aud", ""))
    if aud.rstrip("/") != resource.rstrip("/"):
        return Verdict(
            f"The access token is for another resource ({aud}); password authentication failed for user "
            f'"{user}"'
        )
    if float(claims.get("exp", 0)) <= now:
        return Verdict("The access token has expired. Acquire a new token and retry.")
    if float(claims.get("nbf", 0)) > now + 60:
        return Verdict("The access token is not yet valid. Check the clock.")
    if oid is None or claims.get("oid") != oid:
        return Verdict(
            f"The access token belongs to another identity (oid {claims.get('oid')}); password "
            f'authentication failed for user "{user}"'
        )
    return Verdict(None)
