"""A rogue server on a host of the tests' own: a network namespace joined to this one by a veth pair, so its
address is not loopback (127.0.0.0/8 is exempt from the TLS rule and cannot play a remote host).

The rogue speaks just enough of a protocol to be sent a credential, and records every byte it receives:

* ``postgres-tls``: answers the SSLRequest with ``S`` and a self-signed certificate (what ``sslmode=require``
  accepts and ``verify-full`` refuses), and a client that asks for no TLS in plain; then asks for a cleartext
  password.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SERVER = r"""
import socket, ssl, struct, sys
mode, port, out, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
listener = socket.socket(); listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", port)); listener.listen(16)
open(out + ".ready", "w").close()
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); context.load_cert_chain(cert, key)

def record(data):
    with open(out, "ab") as fh:
        fh.write(data)

def sniff(conn):
    # any protocol: TLS (self-signed) when the client starts a handshake, else plain; record it all
    if conn.recv(1, socket.MSG_PEEK) == b"\x16":
        conn = context.wrap_socket(conn, server_side=True)
    while True:
        data = conn.recv(65536)
        if not data:
            break
        record(data)

def serve(conn):
    conn.settimeout(5)
    if mode == "sniff":
        return sniff(conn)
    first = conn.recv(8)
    record(first)
    if len(first) == 8 and struct.unpack("!ii", first)[1] == 80877103:  # SSLRequest
        conn.sendall(b"S")
        conn = context.wrap_socket(conn, server_side=True)
        record(conn.recv(65536))  # the startup message
    conn.sendall(b"R" + struct.pack("!ii", 8, 3))  # AuthenticationCleartextPassword
    while True:
        data = conn.recv(65536)
        if not data:
            break
        record(data)

while True:
    conn, _ = listener.accept()
    try:
        serve(conn)
    except Exception:
        pass
    finally:
        conn.close()
"""


@dataclass
class Rogue:
    address: str
    port: int
    capture: Path
    ca_file: str = ""  # the CA that signed the rogue's certificate (issued for 127.0.0.1/localhost only)

    def received(self) -> bytes:
        return self.capture.read_bytes() if self.capture.exists() else b""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def rogue_host(tmp_path: Path) -> Iterator[str]:
    """A network namespace reachable at a non-loopback address (returned); removed afterwards."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2 for a network namespace")
    n = os.getpid() % 200 + 20
    ns, host_if, ns_if = f"dami{os.getpid()}", f"dmh{os.getpid()}", f"dmn{os.getpid()}"
    try:
        _ip("netns", "add", ns)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"no network namespaces here: {exc.stderr.decode().strip()}")
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", ns)
        _ip("addr", "add", f"10.213.{n}.1/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("netns", "exec", ns, "ip", "addr", "add", f"10.213.{n}.2/30", "dev", ns_if)
        _ip("netns", "exec", ns, "ip", "link", "set", ns_if, "up")
        _ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)


def start_rogue(ns: str, mode: str, tmp_path: Path) -> tuple[Rogue, subprocess.Popen[bytes]]:
    from django_azure_mi.testing.certs import make_tls_files

    tls = make_tls_files(tmp_path / "rogue-tls", common_name="rogue")
    capture = tmp_path / f"rogue-{mode}.bin"
    script = tmp_path / "rogue.py"
    script.write_text(SERVER)
    port = 5432
    process = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, str(script), mode, str(port), str(capture), tls.cert_file,
         tls.key_file],
    )  # fmt: skip
    ready = Path(str(capture) + ".ready")
    deadline = time.monotonic() + 10
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ready.exists(), "the rogue server did not start"
    n = int(subprocess.run(["ip", "netns", "exec", ns, "ip", "-4", "-o", "addr"], capture_output=True,
                           text=True, check=True).stdout.split("10.213.")[1].split(".")[0])  # fmt: skip
    return Rogue(f"10.213.{n}.2", port, capture, tls.ca_file), process


def _running(ns: str, mode: str, tmp_path: Path) -> Iterator[Rogue]:
    rogue, process = start_rogue(ns, mode, tmp_path)
    try:
        yield rogue
    finally:
        process.kill()
        process.wait(5)


@pytest.fixture
def rogue_sniffer(rogue_host: str, tmp_path: Path) -> Iterator[Rogue]:
    """A rogue server for any protocol on the rogue host: TLS with a self-signed certificate when the client
    starts a handshake, plain otherwise; it records every byte."""
    yield from _running(rogue_host, "sniff", tmp_path)


@pytest.fixture
def rogue_postgres(rogue_host: str, tmp_path: Path) -> Iterator[Rogue]:
    """A rogue Postgres on the rogue host: TLS with a self-signed certificate, and plain for clients that
    don't ask for TLS; it asks for a cleartext password either way."""
    yield from _running(rogue_host, "postgres-tls", tmp_path)
