"""Azure Managed Redis with the **Enterprise clustering policy**, locally: one endpoint whose proxy routes
every command to the shard of its keys, so clients need not know about slots, but the slot rules show.

Behind the enforcer (:mod:`.redisproxy`: token sign-in, closing connections at token expiry) sits one
redis-server in cluster mode owning all 16,384 slots, so redis-server itself refuses what a shard refuses:
``CROSSSLOT Keys in request don't hash to the same slot`` for MULTI/EXEC, EVAL, multi-key blocking pops,
MSETNX, RENAME… over several slots. The proxy, like AMR's, answers per command (request, then reply):

* MGET, MSET, DEL, EXISTS, UNLINK and TOUCH over several slots are split per slot and their replies merged
  (outside MULTI, as the real proxy does);
* ``CLUSTER …`` answers ``ERR not allowed`` (Redis Enterprise without the OSS Cluster API);
* ``SELECT 0`` is accepted and any other database is ``ERR DB index is out of range``;
* after SUBSCRIBE, PSUBSCRIBE, SSUBSCRIBE or MONITOR the connection is relayed as a stream.

Where it differs from AMR (docs/azure-behaviour.md): data is on one server, so SCAN order and memory per
shard are not AMR's; ``INFO`` says ``cluster_enabled:1``; a malformed request ends the connection.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time

from redis.crc import key_slot

from .net import free_port
from .redis import PortTaken, RedisStandIn, bootstrap_acl, launch_redis
from .redisproxy import _close, _CommandReader

SPLIT = {b"MGET", b"MSET", b"DEL", b"EXISTS", b"UNLINK", b"TOUCH"}
STREAMING = {b"SUBSCRIBE", b"PSUBSCRIBE", b"SSUBSCRIBE", b"MONITOR"}
# Commands that can wait on the server: while one waits, the proxy watches its client too, and a client that
# goes ends the command (its upstream connection closed), as redis-server does for a direct client; else a
# BZPOPMIN left behind by a cancelled receive would take the next message and lose it
BLOCKING = {
    *(b"BLPOP", b"BRPOP", b"BRPOPLPUSH", b"BLMOVE", b"BLMPOP"),
    *(b"BZPOPMIN", b"BZPOPMAX", b"BZMPOP", b"XREAD", b"XREADGROUP", b"WAIT", b"WAITAOF"),
}


class RedisEnterpriseStandIn(RedisStandIn):
    """See the module docstring. Context manager; thread-safe."""

    policy = "enterprise"

    def _start_server(self) -> None:
        assert self._tmp
        self._bus_port = (
            getattr(self, "_bus_port", 0) or free_port()
        )  # the default, port + 10000, may not exist
        try:
            self._server = launch_redis(
                self._tmp,
                self.redis_port,
                *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
                *("--cluster-port", str(self._bus_port)),
            )
        except PortTaken:
            self._bus_port = 0  # perhaps the bus port was the one taken: the next attempt picks both
            raise
        bootstrap_acl(self.host, self.redis_port, self.admin_password)
        admin = self.admin()
        if not admin.execute_command("CLUSTER", "SLOTS"):  # a new node (not a restart): take every slot
            admin.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        deadline = time.monotonic() + 10
        while b"cluster_state:ok" not in admin.execute_command("CLUSTER", "INFO"):
            if time.monotonic() > deadline:
                raise RuntimeError("the Enterprise-policy stand-in's server did not take its slots")
            time.sleep(0.05)
        admin.close()

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        proxy = _Session(client, upstream)
        commands = _CommandReader()
        try:
            while not proxy.streaming:
                data = bytes(proxy.early) or client.recv(65536)
                proxy.early.clear()
                if not data:
                    break
                parsed = commands.feed(data)
                replies = []  # a pipeline's replies go back together, as they came
                for index, command in enumerate(parsed):
                    self._observe(client, command)
                    replies.append(proxy.answer(command))
                    if proxy.streaming:  # what follows in this read goes on as a stream
                        client.sendall(b"".join(replies))
                        replies = []
                        later = parsed[index + 1 :]
                        for command in later:
                            self._observe(client, command)
                        upstream.sendall(b"".join(map(_encode, later)) + commands.take_pending())
                        break
                if replies:
                    client.sendall(b"".join(replies))
                if commands.broken:
                    break
            if proxy.streaming:
                threading.Thread(target=self._pump, args=(upstream, client, None), daemon=True).start()
                self._pump(client, upstream, commands)
        except (OSError, ssl.SSLError, ValueError):
            pass
        finally:
            _close(client)
            _close(upstream)
            with self._lock:
                self._conns.pop(client, None)
                self._upstreams.pop(client, None)


class _Session:
    """One client connection through the proxy: its upstream connection and transaction state."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client, self.upstream = client, upstream
        self.replies = _ReplyReader(upstream)
        self.in_multi = False
        self.streaming = False
        self.early = bytearray()  # what the client sent while a blocking command waited

    def answer(self, command: list[bytes]) -> bytes:
        name = command[0].upper() if command else b""
        if name == b"CLUSTER":
            return b"-ERR not allowed\r\n"
        if name == b"SELECT" and len(command) == 2:
            return b"+OK\r\n" if command[1] == b"0" else b"-ERR DB index is out of range\r\n"
        if name == b"MULTI":
            self.in_multi = True
        elif name in (b"EXEC", b"DISCARD"):
            self.in_multi = False
        if name in STREAMING:
            self.streaming = True
            self.upstream.sendall(_encode(command))
            return b""  # the replies come through the stream
        if name in SPLIT and not self.in_multi:
            groups = _by_slot(name, command[1:])
            if len(groups) > 1:
                return self._split(name, groups, len(command) - 1)
        self.upstream.sendall(_encode(command))
        if name in BLOCKING and not self.in_multi:
            self._wait_for_reply()
        return self.replies.frame()

    def _wait_for_reply(self) -> None:
        """Until the server answers a blocking command; a client that closes meanwhile ends it. (Whatever
        else the client sends meanwhile waits in its socket, as it would in redis-server's buffer.)"""
        while not self.replies.buf:
            pending = isinstance(self.client, ssl.SSLSocket) and self.client.pending()
            readable = select.select([self.upstream, self.client], [], [], 0 if pending else None)[0]
            if self.upstream in readable:
                return
            if _closed(self.client, self.early):
                raise ValueError("the client went while its command was waiting")

    def _split(self, name: bytes, groups: dict[int, list[tuple[int, list[bytes]]]], count: int) -> bytes:
        """Send one command per slot (pipelined), then merge their replies as one command's."""
        for entries in groups.values():
            self.upstream.sendall(_encode([name, *(arg for _, args in entries for arg in args)]))
        replies = [self.replies.frame() for _ in groups]
        errors = [reply for reply in replies if reply[:1] == b"-"]
        if errors:
            return errors[0]
        if name == b"MSET":
            return b"+OK\r\n"
        if name != b"MGET":
            return b":%d\r\n" % sum(int(reply[1:].strip()) for reply in replies)
        values: list[bytes] = [b""] * count
        for entries, reply in zip(groups.values(), replies, strict=True):
            for (position, _), value in zip(entries, _elements(reply), strict=True):
                values[position] = value
        return b"*%d\r\n" % count + b"".join(values)


def _by_slot(name: bytes, args: list[bytes]) -> dict[int, list[tuple[int, list[bytes]]]]:
    """The command's keys (MSET: key/value pairs) grouped by slot, each with its position."""
    step = 2 if name == b"MSET" else 1
    groups: dict[int, list[tuple[int, list[bytes]]]] = {}
    for position in range(0, len(args), step):
        pair = args[position : position + step]
        groups.setdefault(key_slot(pair[0]), []).append((position // step, pair))
    return groups


def _closed(sock: socket.socket, early: bytearray) -> bool:
    """Whether the peer closed ``sock`` (TLS or plain); what it sent meanwhile is kept in ``early``."""
    if not (isinstance(sock, ssl.SSLSocket) and sock.pending()) and not select.select([sock], [], [], 0)[0]:
        return False
    sock.setblocking(False)
    try:
        data = sock.recv(65536)
    except (ssl.SSLWantReadError, BlockingIOError):
        return False  # part of a TLS record
    except OSError:
        return True
    finally:
        sock.setblocking(True)
    early += data
    return not data


def _encode(command: list[bytes]) -> bytes:
    return b"*%d\r\n" % len(command) + b"".join(b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in command)


def _elements(array: bytes) -> list[bytes]:
    """The raw frames of an array reply's elements."""
    reader = _ReplyReader(None)
    reader.buf += array
    head = reader.buf.index(b"\r\n")
    count = int(reader.buf[1:head])
    del reader.buf[: head + 2]
    return [reader.frame() for _ in range(count)]


class _ReplyReader:
    """Reads whole RESP2/RESP3 frames (raw bytes) from the server; RESP3 pushes are passed on as frames."""

    AGGREGATES = {ord(c): factor for c, factor in (("*", 1), ("~", 1), (">", 1), ("%", 2), ("|", 2))}
    BLOBS = {ord(c) for c in "$!="}

    def __init__(self, sock: socket.socket | None) -> None:
        self.sock = sock
        self.buf = bytearray()

    def frame(self) -> bytes:
        end = self._end(0)
        while end is None:
            self._read()
            end = self._end(0)
        frame = bytes(self.buf[:end])
        del self.buf[:end]
        return frame

    def _read(self) -> None:
        data = self.sock.recv(65536) if self.sock is not None else b""
        if not data:
            raise ValueError("the server closed the connection")
        self.buf += data

    def _end(self, pos: int) -> int | None:
        """Where the frame starting at ``pos`` ends, or None while incomplete."""
        line = self.buf.find(b"\r\n", pos)
        if line < 0:
            return None
        kind, after = self.buf[pos], line + 2
        if kind in self.BLOBS:
            length = int(self.buf[pos + 1 : line])
            if length < 0:
                return after
            return after + length + 2 if len(self.buf) >= after + length + 2 else None
        if kind in self.AGGREGATES:
            count = max(int(self.buf[pos + 1 : line]), 0) * self.AGGREGATES[kind]
            if kind == ord("|"):  # attributes, then the frame they describe
                count += 1
            for _ in range(count):
                found = self._end(after)
                if found is None:
                    return None
                after = found
            return after
        return after  # a simple string, error, integer, null, double, boolean or big number
