"""The Redis stand-in's enforcer: a TLS-terminating, RESP-aware proxy in front of ``redis-server`` that reads
every ``AUTH`` and ``HELLO … AUTH``, remembers the ``exp`` of the token each connection last authenticated
with and closes the connection when it expires (as Azure does unless the client re-AUTHs in time); and the
token passwords: each token the attached identity endpoint issues for the Redis scope is a password of its
identity's ACL user until it expires. Part of :class:`~django_azure_mi.testing.redis.RedisStandIn`."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jwt

if TYPE_CHECKING:
    from .imds import IMDSEmulator, IssuedToken


class Enforcer:
    """Token passwords and the enforcing proxy (a mixin of RedisStandIn; ``_lock`` is the stand-in's)."""

    resource: str
    host: str
    closed_connections: int
    closures: list[str]
    auth_count: int
    _lock: threading.Lock
    _users: set[str]
    _conns: dict[socket.socket, float]
    _upstreams: dict[socket.socket, socket.socket]  # client -> its connection to redis-server
    _last_command: weakref.WeakKeyDictionary[socket.socket, str]
    _listeners: list[socket.socket]
    _context: ssl.SSLContext | None
    _stopping: threading.Event
    _imds: IMDSEmulator | None
    _tokens: dict[tuple[str, str], float]  # (user, token) -> its exp, on Azure's clock

    def admin(self) -> Any:
        raise NotImplementedError

    def admins(self) -> list[Any]:
        """An admin client of every redis-server behind the enforcer (a cluster has several: ACL users and
        their passwords are per node, as each AMR shard authenticates its own connections)."""
        return [self.admin()]

    def add_identity(self, object_id: str) -> None:
        """Give an identity access (Azure: a data access policy assignment for its object id). Its tokens
        issued before count too, as on Azure, which checks a token, not when it was issued."""
        with self._lock:
            self._users.add(object_id)
        for admin in self.admins():
            _grant(admin, object_id)
        if self._imds is not None:
            for issued in list(self._imds.issued):
                if issued.identity.object_id == object_id and issued.expires_on > self._now():
                    self._on_token(issued)

    def reset_counters(self) -> None:
        with self._lock:
            self.closed_connections = 0
            self.closures.clear()
            self.auth_count = 0

    @property
    def client_count(self) -> int:
        with self._lock:
            return len(self._conns)

    def attach(self, imds: IMDSEmulator) -> Callable[[], None]:
        """Accept the Redis-scope tokens ``imds`` issues to registered identities. Returns a detach
        function."""
        self._imds = imds  # its clock (a fake one, clock_skew) is Azure's: it judges expiry
        return imds.on_token(self._on_token)

    def _now(self) -> float:
        """Azure's clock: the attached identity endpoint's."""
        return self._imds.now() if self._imds is not None else time.time()

    def _on_token(self, issued: IssuedToken) -> None:
        if issued.resource.rstrip("/") != self.resource.rstrip("/"):
            return
        user = issued.identity.object_id
        with self._lock:
            if user not in self._users:
                return
            self._tokens[(user, issued.token)] = issued.expires_on
        for admin in self.admins():
            with contextlib.suppress(Exception):  # down for a restart(), which adds it when back
                admin.execute_command("ACL", "SETUSER", user, f">{issued.token}")

    def _front(self, upstream_port: int, port: int = 0) -> int:
        """Listen on ``port`` (0: a free one) for clients of the redis-server on ``upstream_port``; returns
        the port. Every client connection gets its own upstream connection, enforced as above."""
        listener = socket.create_server((self.host, port), backlog=256)
        self._listeners.append(listener)
        threading.Thread(
            target=self._accept_loop, args=(listener, upstream_port), name="redis-enforcer", daemon=True
        ).start()
        return int(listener.getsockname()[1])

    def _close_listeners(self) -> None:
        for listener in self._listeners:
            with contextlib.suppress(OSError):
                listener.close()
        self._listeners.clear()

    def _accept_loop(self, listener: socket.socket, upstream_port: int) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client, upstream_port), daemon=True).start()

    def _serve(self, raw_client: socket.socket, upstream_port: int) -> None:
        try:
            raw_client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle delay per reply
            client = self._context.wrap_socket(raw_client, server_side=True) if self._context else raw_client
            upstream = socket.create_connection((self.host, upstream_port))
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, ssl.SSLError):
            _close(raw_client)
            return
        with self._lock:
            self._conns[client] = float("inf")
            self._upstreams[client] = upstream
        self._relay(client, upstream)

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        """Bytes both ways as they come, watching the client's commands."""
        threading.Thread(target=self._pump, args=(upstream, client, None), daemon=True).start()
        self._pump(client, upstream, _CommandReader())

    def _pump(self, src: socket.socket, dst: socket.socket, reader: _CommandReader | None) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if reader is not None:
                    for command in reader.feed(data):
                        self._observe(src, command)
                dst.sendall(data)
        except (OSError, ssl.SSLError):
            pass
        finally:
            _close(src)
            _close(dst)
            with self._lock:
                for sock in (src, dst):
                    self._conns.pop(sock, None)
                    self._upstreams.pop(sock, None)

    def _observe(self, client: socket.socket, command: list[bytes]) -> None:
        """Note the expiry of the token an AUTH / HELLO … AUTH carries (if it is one the server accepts)."""
        name = command[0].upper() if command else b""
        self._last_command[client] = name.decode(errors="replace")
        if name == b"AUTH" and len(command) >= 2:
            token = command[-1]
        elif name == b"HELLO" and b"AUTH" in (arg.upper() for arg in command):
            index = [arg.upper() for arg in command].index(b"AUTH")
            if len(command) < index + 3:
                return
            token = command[index + 2]
        else:
            return
        try:
            exp = float(jwt.decode(token, options={"verify_signature": False})["exp"])
        except (jwt.PyJWTError, KeyError, TypeError, ValueError):
            return  # a password, not a token: no expiry
        with self._lock:
            self.auth_count += 1
            if exp > self._now() and client in self._conns:
                self._conns[client] = exp

    def _expiry_loop(self) -> None:
        """Every 20 ms: close the connections whose token expired and drop expired tokens' passwords (one
        loop, no timer per token)."""
        while not self._stopping.wait(0.02):
            now = self._now()
            expired_upstreams: list[socket.socket | None] = []
            with self._lock:
                expired = [conn for conn, exp in self._conns.items() if exp <= now]
                for conn in expired:
                    del self._conns[conn]
                    expired_upstreams.append(self._upstreams.pop(conn, None))
                    self.closures.append(self._last_command.get(conn, ""))
                self.closed_connections += len(expired)
                stale = [key for key, exp in self._tokens.items() if exp <= now]
                for key in stale:
                    del self._tokens[key]
            for sock in [*expired, *expired_upstreams]:
                if sock is not None:
                    _close(sock)
            admins = self.admins() if stale else []
            for user, token in stale:
                for admin in admins:
                    with contextlib.suppress(Exception):
                        admin.execute_command("ACL", "SETUSER", user, f"<{token}")


class _CommandReader:
    """Incremental parser of client → server RESP: arrays of bulk strings, and inline commands.

    It only watches: the bytes go to redis-server whatever it makes of them. Input it can't parse (``*abc``,
    a bulk without ``$``) stops the watching for that connection and leaves the answer to redis-server,
    which replies ``-ERR Protocol error: …`` and closes the connection, as Azure's Redis does."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.broken = False

    def feed(self, data: bytes) -> list[list[bytes]]:
        if self.broken:
            return []
        self._buf += data
        commands: list[list[bytes]] = []
        while True:
            try:
                parsed = self._parse_one()
            except ValueError:
                self.broken = True
                self._buf.clear()
                return commands
            if parsed is None:
                return commands
            commands.append(parsed)

    def take_pending(self) -> bytes:
        """The bytes received but not yet parsed (and forget them)."""
        pending = bytes(self._buf)
        self._buf.clear()
        return pending

    def _parse_one(self) -> list[bytes] | None:
        buf = self._buf
        if not buf:
            return None
        end = buf.find(b"\r\n")
        if end < 0:
            return None
        if buf[0:1] != b"*":  # inline command
            line = bytes(buf[:end])
            del buf[: end + 2]
            return line.split()
        count = int(buf[1:end])  # ValueError: not a multibulk length
        pos = end + 2
        args = []
        for _ in range(count):
            if len(buf) > pos and buf[pos : pos + 1] != b"$":
                raise ValueError("expected '$'")
            end = buf.find(b"\r\n", pos)
            if end < 0:
                return None
            length = int(buf[pos + 1 : end])
            if length < 0:
                raise ValueError("invalid bulk length")
            start = end + 2
            if len(buf) < start + length + 2:
                return None
            args.append(bytes(buf[start : start + length]))
            pos = start + length + 2
        del buf[:pos]
        return args


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


def _grant(admin: Any, user: str) -> None:
    """An ACL user with full access and no password yet (its tokens are added as they are issued)."""
    admin.execute_command("ACL", "SETUSER", user, "on", "resetpass", "~*", "&*", "+@all")
