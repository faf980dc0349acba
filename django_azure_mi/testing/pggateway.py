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

import logging
import socket
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .gateway import TcpGateway, read_exact, token_problem

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


def _read_startup(conn: Any) -> bytes:
    """One length-prefixed startup-phase packet (no type byte), length included."""
    head = read_exact(conn, 4)
    (length,) = struct.unpack("!i", head)
    if not 8 <= length <= 10000:
        raise ConnectionError("not a Postgres client")
    return head + read_exact(conn, length - 4)


def _read_message(conn: Any) -> tuple[bytes, bytes]:
    kind = read_exact(conn, 1)
    (length,) = struct.unpack("!i", read_exact(conn, 4))
    if not 4 <= length <= 1 << 20:
        raise ConnectionError("message too long")
    return kind, read_exact(conn, length - 4)


def startup_params(packet: bytes) -> dict[str, str]:
    parts = packet[8:].split(b"\0")
    return {parts[i].decode(): parts[i + 1].decode() for i in range(0, len(parts) - 1, 2) if parts[i]}


class Gateway(TcpGateway):
    """Listens on ``host:port``; ``check(user, password) -> Verdict``; ``backend()`` opens a socket to the
    real server. Counts accepted and refused sign-ins."""

    name = "pg-gateway"

    def __init__(
        self,
        host: str,
        port: int,
        context: ssl.SSLContext,
        check: Callable[[str, str], Verdict],
        backend: Callable[[], socket.socket],
    ) -> None:
        self.check, self.backend = check, backend
        super().__init__(host, port, context)

    def _session(self, conn: socket.socket) -> None:
        client: Any = conn
        server: socket.socket | None = None
        try:
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
                self._refused(verdict.message)
                client.sendall(error_response(verdict.message, verdict.code))
                return
            self._signed_in(body.rstrip(b"\0"))
            server = self.backend()
            self._track(server)
            server.sendall(packet)
            self.relay(client, server)
        finally:
            self._untrack(*(s for s in (client, server) if s is not None))


# ---------------------------------------------------------------------------------------------- tokens


def check_token(
    token: str, *, key: Any, resource: str, oid: str | None, user: str, now: float | None = None
) -> Verdict:
    """Azure's checks of a Postgres sign-in token, each refusal in its words (see the module docstring)."""
    problem = token_problem(token, key=key, resource=resource, oid=oid, now=now)
    refused = f'password authentication failed for user "{user}"'
    if problem is None:
        return Verdict(None)
    if problem == "invalid":
        return Verdict(refused)
    if problem.startswith("audience "):
        return Verdict(f"The access token is for another resource ({problem[9:]}); {refused}")
    if problem == "expired":
        return Verdict("The access token has expired. Acquire a new token and retry.")
    if problem == "not yet valid":
        return Verdict("The access token is not yet valid. Check the clock.")
    return Verdict(f"The access token belongs to another identity (oid {problem[9:]}); {refused}")
