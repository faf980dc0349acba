"""The identity endpoint's HTTP transport: azure-core's ``RequestsTransport`` with every request bounded.

azure-core bounds each socket read (``read_timeout``) and reads a whole body before anyone looks at its
size. An endpoint that trickles its answer a byte at a time (headers or body) never trips a per-read
timeout, and one that streams an endless body grows the worker without limit. Here each HTTP request to
the identity endpoint has **one overall deadline** (its connection is shut down when it passes, wherever
the request is: connecting, sending, reading headers or body) and its body is **capped while reading**.
Either failure is an ordinary read error that azure-core's retry policy and then the token core's own
schedule deal with (docs/security.md, "Every wait bounded").

Only the credentials this package builds use it; nothing is patched process-wide.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any, Final

import requests
from azure.core.pipeline.transport import RequestsTransport
from requests.adapters import HTTPAdapter
from urllib3 import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util.retry import Retry

MAX_BODY: Final = 64 * 1024  # an identity endpoint's answer is a token (a few kB) and a few numbers
_PIECE: Final = 8192


class BoundedAdapter(HTTPAdapter):
    """A requests adapter whose every request ends by ``deadline`` seconds after it started and reads
    at most ``max_body`` bytes of body."""

    def __init__(self, deadline: float, max_body: int = MAX_BODY) -> None:
        self.deadline, self.max_body = deadline, max_body
        self._current: dict[int, Any] = {}  # thread -> the urllib3 connection its request uses
        # azure-core retries; urllib3 must not (as azure-core's own adapter)
        super().__init__(max_retries=Retry(total=False, redirect=False, raise_on_status=False))

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        current = self._current

        def tracking(base: type[HTTPConnectionPool]) -> type[HTTPConnectionPool]:
            class Pool(base):  # type: ignore[valid-type,misc]
                def _get_conn(self, timeout: float | None = None) -> Any:
                    conn = super()._get_conn(timeout)
                    current[threading.get_ident()] = conn
                    return conn

            return Pool

        self.poolmanager.pool_classes_by_scheme = {
            "http": tracking(HTTPConnectionPool),
            "https": tracking(HTTPSConnectionPool),
        }

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        thread = threading.get_ident()
        deadline = time.monotonic() + self.deadline
        watchdog = threading.Timer(self.deadline, self._abort, (thread,))
        watchdog.daemon = True
        watchdog.name = "django-azure-mi token request deadline"  # lives while a request does
        watchdog.start()
        try:
            kwargs["stream"] = True  # the body is read here, capped
            response = super().send(request, **kwargs)
            try:
                response._content = self._read(response, deadline)  # what .content returns
            except BaseException:
                response.close()
                raise
            return response
        except requests.RequestException:
            if time.monotonic() >= deadline:
                raise requests.ConnectionError(
                    f"the identity endpoint did not answer within {self.deadline:g}s (one deadline per "
                    "request)"
                ) from None
            raise
        finally:
            watchdog.cancel()
            watchdog.join()  # gone with the request (it wakes at once when cancelled)
            self._current.pop(thread, None)

    def _read(self, response: requests.Response, deadline: float) -> bytes:
        raw = response.raw
        body = bytearray()
        while True:
            if time.monotonic() >= deadline:
                raise requests.ConnectionError(
                    f"the identity endpoint's answer took longer than {self.deadline:g}s"
                )
            piece = raw.read1(_PIECE) if hasattr(raw, "read1") else raw.read(_PIECE)
            if not piece:
                return bytes(body)
            body += piece
            if len(body) > self.max_body:
                raise requests.ConnectionError(
                    f"the identity endpoint's answer is larger than {self.max_body} bytes"
                )

    def _abort(self, thread: int) -> None:
        """The deadline passed: shut the request's connection down (a blocked read returns at once)."""
        conn = self._current.get(thread)
        sock = getattr(conn, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class BoundedTransport(RequestsTransport):  # type: ignore[misc]  # untyped in azure-core
    """azure-core's ``RequestsTransport`` whose session uses :class:`BoundedAdapter`."""

    def __init__(self, *, deadline: float, max_body: int = MAX_BODY, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._deadline, self._max_body = deadline, max_body

    def _init_session(self, session: requests.Session) -> None:
        super()._init_session(session)
        adapter = BoundedAdapter(self._deadline, self._max_body)
        for prefix in self._protocols:
            session.mount(prefix, adapter)
