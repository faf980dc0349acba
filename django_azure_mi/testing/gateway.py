"""What the database stand-ins' sign-in gateways share: a TCP listener whose every connection is served by
its own thread, the sockets tracked so that ``close()`` ends them all, a byte relay once a client is in,
the counts of accepted and refused sign-ins, and Azure's checks of a sign-in token.

Azure Database for PostgreSQL and for MySQL accept *every* unexpired token of a user's identity as its
password; a password in the real server can't say that, so each stand-in's real server listens where only
its gateway reaches it, and the gateway, which owns the TCP port, checks the token first
(``pggateway.py``, ``mysqlgateway.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from typing import Any


class TcpGateway:
    """Listens on ``host:port`` (0: a free one, then ``port``) with TLS ``context``; a subclass serves each
    connection in :meth:`_session`."""

    name = "gateway"

    def __init__(self, host: str, port: int, context: ssl.SSLContext) -> None:
        self.host, self.context = host, context
        self.sign_ins = 0
        self.refusals: list[str] = []
        self.accepted: list[str] = []  # fingerprints (sha256, 16 hex) of the secrets that signed in
        self._lock = threading.Lock()
        self._listener = socket.create_server((host, port), backlog=256)
        self.port = int(self._listener.getsockname()[1])
        self._closed = False
        self._connections: set[Any] = set()
        self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
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
                target=self._serve_one, args=(conn,), name=f"{self.name}-session", daemon=True
            ).start()

    def _serve_one(self, conn: socket.socket) -> None:
        self._track(conn)
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small messages: no Nagle delay
            conn.settimeout(30)
            self._session(conn)
        except (OSError, ConnectionError, ssl.SSLError, ValueError, IndexError, struct.error):
            pass  # a client that went away, or sent what no real client sends: that session ends
        finally:
            self._untrack(conn)

    def _session(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def _track(self, *socks: Any) -> None:
        with self._lock:
            self._connections.update(socks)

    def _untrack(self, *socks: Any) -> None:
        with self._lock:
            self._connections.difference_update(socks)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.close()

    def _signed_in(self, secret: bytes) -> None:
        with self._lock:
            self.sign_ins += 1
            self.accepted.append(fingerprint(secret))

    def _refused(self, message: str) -> None:
        with self._lock:
            self.refusals.append(message)

    @staticmethod
    def relay(
        client: Any, server: socket.socket, from_client: Callable[[Any, socket.socket], bool] | None = None
    ) -> None:
        """Copy bytes both ways until either side closes (one thread; TLS records drained via pending()).
        ``from_client(client, server)``, if given, takes what the client sends instead of the copy, and
        says whether the session goes on."""
        client.settimeout(None)  # a session may idle for as long as its client likes, as on Azure
        server.settimeout(None)
        while True:
            ready = [client] if getattr(client, "pending", lambda: 0)() else []
            if not ready:
                ready, _, _ = select.select([client, server], [], [])
            for source in ready:
                if source is client and from_client is not None:
                    if not from_client(client, server):
                        return
                    continue
                target = server if source is client else client
                data = source.recv(65536)
                if not data:
                    return
                target.sendall(data)


def fingerprint(secret: bytes | str) -> str:
    """A short, one-way name for a secret (sha256, 16 hex digits): what the stand-ins record."""
    data = secret.encode() if isinstance(secret, str) else secret
    return hashlib.sha256(data).hexdigest()[:16]


def token_problem(
    token: str, *, key: Any, resource: str, oid: str | None, now: float | None = None
) -> str | None:
    """What Azure would refuse in a sign-in token, None if nothing: ``"invalid"`` (not a token signed by
    the identity endpoint's key), ``"audience <aud>"``, ``"expired"``, ``"not yet valid"``, ``"identity
    <oid>"`` (another identity's, or the user has none). Each gateway words it as its server does."""
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
        return "invalid"
    aud = str(claims.get("aud", ""))
    if aud.rstrip("/") != resource.rstrip("/"):
        return f"audience {aud}"
    if float(claims.get("exp", 0)) <= now:
        return "expired"
    if float(claims.get("nbf", 0)) > now + 60:
        return "not yet valid"
    if oid is None or claims.get("oid") != oid:
        return f"identity {claims.get('oid')}"
    return None


def read_exact(conn: Any, n: int) -> bytes:
    """``n`` bytes from a socket (ConnectionError if it closes first)."""
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the peer went away")
        data += chunk
    return data


def attach_to(lock: threading.Lock, attached: list[Any], imds: Any) -> Callable[[], None]:
    """Push ``imds`` on a stand-in's ``attached`` stack (the last one checks tokens); returns the function
    that takes that attachment off again, bringing back the one before (a test's emulator over the
    session's)."""
    with lock:
        attached.append(imds)

    def detach() -> None:
        with lock:
            if imds in attached:
                attached.reverse()
                attached.remove(imds)  # the latest attachment of it
                attached.reverse()

    return detach
