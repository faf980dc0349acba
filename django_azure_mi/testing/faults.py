"""What the identity endpoint emulator does instead of answering: scripted faults (status codes with
Retry-After, latency, hangs, endless and trickling answers, malformed JSON) and holds. Part of
:class:`~django_azure_mi.testing.imds.IMDSEmulator`."""

from __future__ import annotations

import collections
import json
import threading
import time
from dataclasses import dataclass
from typing import Any


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


class Faults:
    """The fault script (a mixin of IMDSEmulator; ``_lock`` is the emulator's)."""

    _lock: threading.Lock
    _script: collections.deque[Fault]
    _always: Fault | None
    _release_hangs: threading.Event
    _stopping: threading.Event
    fault_bytes: list[int]

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

    def _play_fault(self, handler: Any, fault: Fault | None, latency: float) -> bool:
        """Play ``fault`` on the request (after ``latency`` plus the fault's own); True when that was the
        answer, False when the normal answer follows."""
        delay = latency + (fault.seconds if fault is not None and fault.kind == "latency" else 0.0)
        if delay:
            self._stopping.wait(delay)
        if fault is not None:
            if fault.kind == "status":
                headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
                body = fault.body or json.dumps(
                    {"error": "server_error", "error_description": f"injected HTTP {fault.status}"}
                )
                handler.reply(fault.status, body, headers)
                return True
            if fault.kind == "malformed":
                handler.reply(200, '{"access_token": "not json')
                return True
            if fault.kind in ("endless", "trickle"):
                self._stream_fault(handler, fault)
                return True
            if fault.kind == "hang":
                release = self._release_hangs
                while not (self._stopping.is_set() or release.is_set()):
                    self._stopping.wait(0.05)
                handler.close_connection = True
                return True
            if fault.kind == "hold":
                assert fault.hold is not None
                fault.hold.arrived.set()
                while not (self._stopping.is_set() or fault.hold._released.wait(0.05)):
                    pass
        return False  # latency and holds end in a normal answer

    def _stream_fault(self, handler: Any, fault: Fault) -> None:
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
