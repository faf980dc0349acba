"""Network helpers the stand-ins share."""

from __future__ import annotations

import contextlib
import random
import socket

_EPHEMERAL = "/proc/sys/net/ipv4/ip_local_port_range"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, for a server started next.

    Picked at random below the kernel's ephemeral range where there is one (Linux: 32768 and up), so the
    many client connections of a test run, whose local ports come from that range, can't take it before
    the server binds it; a random pick also makes two parallel workers unlikely to pick the same one. (A
    server must still check that what answers on it is itself: see ``redis.launch_redis``.)"""
    low = _ephemeral_low()
    chooser = random.SystemRandom()
    for _ in range(50) if low > 20000 else ():
        port = chooser.randrange(15000, low)
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind(("127.0.0.1", port))
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ephemeral_low() -> int:
    try:
        with open(_EPHEMERAL, encoding="ascii") as file:
            return int(file.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0
