"""The sign-in gateway of the MySQL stand-in: Azure Database for MySQL's token check in front of a real
MariaDB, speaking the MySQL client/server protocol.

The real server listens on a private Unix socket only; this gateway owns the TCP port. For each client:

1. it opens a session to the real server and hands the client that server's greeting (its version, its
   connection id and its scramble), announcing TLS (``CLIENT_SSL``);
2. TLS is required, as on Azure (``require_secure_transport=ON``): a client that answers without asking
   for TLS gets MySQL's error 3159 and the connection is closed;
3. inside TLS, the client's handshake response names the user. A Microsoft Entra user (one the stand-in
   bound to an identity, as ``CREATE AADUSER … IDENTIFIED BY '<client id>'`` does on Azure) is asked to
   switch to ``mysql_clear_password`` unless it already sent its password with that plugin, and the
   password is checked as Azure checks a token (:func:`~.gateway.token_problem`: signature, audience,
   expiry, the identity's object id; every unexpired token of the identity is accepted). A refusal is
   MySQL's error 1045 "Access denied for user …" (the reason is recorded in ``refusals``);
4. once the token is accepted, the gateway signs in to the real server as the same user with a password
   only it knows, with the client's own capabilities, character set, database and connection attributes,
   and hands the server's answer to the client; from then on bytes are relayed both ways.

The server's Microsoft Entra admin (``add_entra_admin``) runs what only Azure's MySQL knows (``CREATE
AADUSER …``, ``SET aad_auth_validate_oids_in_tenant``): the gateway reads that session's statements and hands
those to the stand-in, which answers them; everything else goes on to the real server.

A password user (``set_password``, Azure's built-in MySQL authentication) signs in to the real server
itself: its handshake goes through with the packets' sequence numbers shifted by the TLS request, until
the server says OK or refuses. Where this differs from Azure's MySQL 8: docs/azure-behaviour.md.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from .gateway import TcpGateway, read_exact

CLIENT_CONNECT_WITH_DB: Final = 0x8
CLIENT_SSL: Final = 0x800
CLIENT_SECURE_CONNECTION: Final = 0x8000
CLIENT_PLUGIN_AUTH: Final = 0x80000
CLIENT_CONNECT_ATTRS: Final = 0x100000
CLIENT_LENENC_AUTH: Final = 0x200000  # CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
OK_PACKET: Final = b"\x00\x00\x00\x02\x00\x00\x00"  # no rows, no insert id, autocommit, no warnings
COM_QUERY: Final = 0x03
CLEAR: Final = b"mysql_clear_password"
NATIVE: Final = b"mysql_native_password"


@dataclass
class User:
    """How a user signs in: ``check(password) -> refusal reason or None`` for a Microsoft Entra user, whose
    session on the real server uses ``internal`` (a password only the gateway knows); ``check`` None for a
    password user, whose own handshake goes to the real server."""

    check: Callable[[str], str | None] | None
    internal: str = ""
    # the Entra admin's: a statement only Azure knows -> the answer's payload (None: the real server's)
    statements: Callable[[str], bytes | None] | None = None


@dataclass
class Response:
    """A client's HandshakeResponse41, parsed; ``rest`` keeps the database, plugin and attributes' bytes."""

    flags: int
    head: bytes  # max packet size, character set, filler (and MariaDB's extended capabilities)
    user: str
    auth: bytes
    database: bytes | None
    plugin: bytes
    attributes: bytes


def read_packet(sock: Any) -> tuple[int, bytes]:
    """(sequence id, payload) of one packet (a payload of 16 MiB or more continues: not in a handshake)."""
    header = read_exact(sock, 4)
    length = header[0] | header[1] << 8 | header[2] << 16
    return header[3], read_exact(sock, length)


def write_packet(sock: Any, seq: int, payload: bytes) -> None:
    sock.sendall(struct.pack("<I", len(payload))[:3] + bytes([seq & 0xFF]) + payload)


def error_packet(code: int, state: str, message: str) -> bytes:
    return b"\xff" + struct.pack("<H", code) + b"#" + state.encode() + message.encode()


def native_scramble(password: str, salt: bytes) -> bytes:
    """``mysql_native_password``'s answer: SHA1(password) XOR SHA1(salt + SHA1(SHA1(password)))."""
    stage1 = hashlib.sha1(password.encode()).digest()
    stage2 = hashlib.sha1(stage1).digest()
    mixed = hashlib.sha1(salt + stage2).digest()
    return bytes(a ^ b for a, b in zip(stage1, mixed, strict=True))


class MySQLGateway(TcpGateway):
    """Listens on ``host:port``; ``users(name) -> User | None``; ``backend()`` opens a socket to the real
    server. Counts accepted and refused token sign-ins."""

    name = "mysql-gateway"

    def __init__(
        self,
        host: str,
        port: int,
        context: ssl.SSLContext,
        users: Callable[[str], User | None],
        backend: Callable[[], socket.socket],
    ) -> None:
        self.users, self.backend = users, backend
        super().__init__(host, port, context)

    def _session(self, conn: socket.socket) -> None:
        client: Any = conn
        server = self.backend()
        server.settimeout(30)  # the sign-in is bounded on both sides (the relay lifts it)
        self._track(server)
        try:
            _, greeting = read_packet(server)
            salt, capabilities = _greeting_facts(greeting)
            write_packet(conn, 0, _with_tls(greeting))
            seq, payload = read_packet(conn)
            flags = struct.unpack("<I", payload[:4])[0]
            if len(payload) != 32 or not flags & CLIENT_SSL:  # a handshake response without TLS
                insecure = "Connections using insecure transport are prohibited while "
                insecure += "--require_secure_transport=ON."
                write_packet(conn, seq + 1, error_packet(3159, "08004", insecure))
                return
            client = self.context.wrap_socket(conn, server_side=True)
            self._track(client)
            seq, payload = read_packet(client)
            response = parse_response(payload)
            user = self.users(response.user)
            if user is None or user.check is None:  # a password user (or none): the real server decides
                self._pass_through(client, server, seq, payload)
                return
            if response.plugin != CLEAR or not response.auth:
                seq += 1
                write_packet(client, seq, b"\xfe" + CLEAR + b"\0")  # AuthSwitchRequest, no data
                seq, token = read_packet(client)
            else:
                token = response.auth
            secret = token.rstrip(b"\0")
            problem = user.check(secret.decode("utf-8", "replace"))
            if problem is not None:
                self._refused(f"{response.user}: {problem}")
                denied = f"Access denied for user '{response.user}'@'127.0.0.1' (using password: YES)"
                write_packet(client, seq + 1, error_packet(1045, "28000", denied))
                return
            self._signed_in(secret)
            write_packet(server, 1, _response_to_server(response, capabilities, user.internal, salt))
            _, answer = read_packet(server)
            write_packet(client, seq + 1, answer)
            if answer[:1] == b"\x00":
                if user.statements is None:
                    self.relay(client, server)
                else:
                    self._relay_statements(client, server, user.statements)
        finally:
            self._untrack(*(s for s in (client, server) if s is not None))

    @staticmethod
    def _relay_statements(
        client: Any, server: socket.socket, statements: Callable[[str], bytes | None]
    ) -> None:
        """The relay of the Entra admin's session: the client's packets one by one, a query that
        ``statements`` answers answered here (as Azure's server answers its own statements), the rest
        and everything the server says passed on."""

        def from_client(client: Any, server: socket.socket) -> bool:
            try:
                seq, payload = read_packet(client)
            except (ConnectionError, OSError):
                return False
            answer = None
            if payload[:1] == bytes([COM_QUERY]):
                answer = statements(payload[1:].decode("utf-8", "replace"))
            if answer is None:
                write_packet(server, seq, payload)
            else:
                write_packet(client, seq + 1, answer)
            return True

        TcpGateway.relay(client, server, from_client)

    @staticmethod
    def _pass_through(client: Any, server: socket.socket, seq: int, payload: bytes) -> None:
        """A password user's handshake, on to the real server (TLS flag cleared, sequence ids shifted by
        the TLS request), packet for packet until the server says OK (then the relay) or refuses."""
        flags = struct.unpack("<I", payload[:4])[0] & ~CLIENT_SSL
        write_packet(server, seq - 1, struct.pack("<I", flags) + payload[4:])
        while True:
            server_seq, answer = read_packet(server)
            write_packet(client, server_seq + 1, answer)
            if answer[:1] == b"\x00":
                TcpGateway.relay(client, server)
                return
            if answer[:1] == b"\xff":
                return
            client_seq, more = read_packet(client)  # the answer to an auth switch or more auth data
            write_packet(server, client_seq - 1, more)


def parse_response(payload: bytes) -> Response:
    flags = struct.unpack("<I", payload[:4])[0]
    head, pos = payload[4:32], 32
    end = payload.index(b"\0", pos)
    user, pos = payload[pos:end].decode("utf-8", "replace"), end + 1
    if flags & CLIENT_LENENC_AUTH:
        length, pos = _lenenc(payload, pos)
    elif flags & CLIENT_SECURE_CONNECTION:
        length, pos = payload[pos], pos + 1
    else:
        length = payload.index(b"\0", pos) - pos
    auth, pos = payload[pos : pos + length], pos + length
    if not flags & (CLIENT_LENENC_AUTH | CLIENT_SECURE_CONNECTION):
        pos += 1  # the NUL after a NUL-terminated answer
    database = None
    if flags & CLIENT_CONNECT_WITH_DB and pos < len(payload):
        end = payload.index(b"\0", pos)
        database, pos = payload[pos:end], end + 1
    plugin = b""
    if flags & CLIENT_PLUGIN_AUTH and pos < len(payload):
        end = payload.index(b"\0", pos)
        plugin, pos = payload[pos:end], end + 1
    attributes = payload[pos:] if flags & CLIENT_CONNECT_ATTRS else b""
    return Response(flags, head, user, auth, database, plugin, attributes)


def _response_to_server(response: Response, capabilities: int, password: str, salt: bytes) -> bytes:
    """The client's handshake response for the real server: its capabilities (without TLS; what the server
    has), character set, user, database and attributes, signed in with ``password``."""
    flags = response.flags & ~CLIENT_SSL & capabilities | CLIENT_PLUGIN_AUTH | CLIENT_SECURE_CONNECTION
    answer = native_scramble(password, salt)
    auth = _lenenc_bytes(answer) if flags & CLIENT_LENENC_AUTH else bytes([len(answer)]) + answer
    out = struct.pack("<I", flags) + response.head + response.user.encode() + b"\0" + auth
    if flags & CLIENT_CONNECT_WITH_DB:
        out += (response.database or b"") + b"\0"
    out += NATIVE + b"\0"
    if flags & CLIENT_CONNECT_ATTRS:
        out += response.attributes or b"\0"
    return out


def _greeting_facts(greeting: bytes) -> tuple[bytes, int]:
    """(the scramble, the capability flags) of a HandshakeV10."""
    pos = greeting.index(b"\0", 1) + 1 + 4  # protocol version, server version, connection id
    part1 = greeting[pos : pos + 8]
    pos += 9
    low = struct.unpack("<H", greeting[pos : pos + 2])[0]
    pos += 2 + 1 + 2  # character set, status flags
    high = struct.unpack("<H", greeting[pos : pos + 2])[0]
    pos += 2
    data_length = greeting[pos]
    pos += 1 + 10
    part2 = greeting[pos : pos + max(13, data_length - 8)]
    return part1 + part2.rstrip(b"\0"), low | high << 16


def _with_tls(greeting: bytes) -> bytes:
    """The greeting with ``CLIENT_SSL`` announced (the real server behind the socket has no TLS)."""
    pos = greeting.index(b"\0", 1) + 1 + 4 + 9
    low = struct.unpack("<H", greeting[pos : pos + 2])[0] | CLIENT_SSL
    return greeting[:pos] + struct.pack("<H", low) + greeting[pos + 2 :]


def _lenenc(data: bytes, pos: int) -> tuple[int, int]:
    first = data[pos]
    if first < 0xFB:
        return first, pos + 1
    size = {0xFC: 2, 0xFD: 3, 0xFE: 8}[first]
    return int.from_bytes(data[pos + 1 : pos + 1 + size], "little"), pos + 1 + size


def _lenenc_bytes(value: bytes) -> bytes:
    n = len(value)
    prefix = bytes([n]) if n < 0xFB else b"\xfc" + n.to_bytes(2, "little")
    return prefix + value
