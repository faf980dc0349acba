"""Running the fleet site under real servers: shared by tests/test_fleet.py and benchmarks/fleet.py."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

SITE = Path(__file__).resolve().parent
ROOT = SITE.parent.parent
SCOPES = {"postgres": "https://ossrdbms-aad.database.windows.net", "redis": "https://redis.azure.com"}
PATHS = {"gunicorn": "/sync", "uvicorn": "/async"}


def site_env(
    imds: Any,
    pg: Any,
    redis: Any,
    identity: dict[str, Any] | None = None,
    *,
    azurite: Any = None,
    pool: bool = False,
) -> dict[str, str]:
    """The environment of the site's processes: the identity endpoint, and FLEET_CONFIG for fleet_settings
    (``azurite``: Blob Storage too; ``pool``: Django's psycopg pool instead of persistent connections)."""
    config = {
        "database": pg.database_settings("app-identity"),
        "cache": redis.cache_settings(),
        "identity": identity or {},
        "storage": azurite.storage_settings("fleet", expiration_secs=600) if azurite is not None else None,
        "pool": pool,
    }
    env = {**os.environ, **{k: v for k, v in imds.environ().items() if v is not None}}
    env.update(
        FLEET_CONFIG=json.dumps(config),
        DJANGO_SETTINGS_MODULE="fleet_settings",
        PYTHONPATH=os.pathsep.join([str(SITE), str(ROOT)]),
    )
    return env


@contextlib.contextmanager
def stand_ins(ttl: float, redis_policy: str = "single") -> Iterator[tuple[Any, Any, Any]]:
    """(imds, pg, redis): the identity endpoint with the given token lifetime, and Postgres and Redis
    (``redis_policy``: testing.redis.POLICIES) stand-ins that accept its tokens for the site's identity
    ("app-identity" in Postgres)."""
    from django_azure_mi.testing.imds import IMDSEmulator
    from django_azure_mi.testing.postgres import PostgresStandIn
    from django_azure_mi.testing.redis import redis_stand_in

    with IMDSEmulator(ttl=ttl) as imds, PostgresStandIn() as pg, redis_stand_in(redis_policy) as redis:
        pg.add_role("app-identity")
        pg.attach(imds)
        redis.add_identity(imds.object_id())
        redis.attach(imds)
        yield imds, pg, redis


def migrate(env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "django", "migrate", "--noinput", "-v", "0"],
        env=env, cwd=SITE, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"migrate failed: {done.stderr[-2000:]}")


def command(server: str, port: int, workers: int, preload: bool = True) -> list[str]:
    if server == "gunicorn":
        return [sys.executable, "-m", "gunicorn", *(["--preload"] if preload else []), "-w", str(workers),
                "-b", f"127.0.0.1:{port}", "fleet_app:application"]  # fmt: skip
    return [sys.executable, "-m", "uvicorn", "--workers", str(workers), "--port", str(port),
            "fleet_app:asgi_application"]  # fmt: skip


class Process:
    """A process of the site (``command`` run in the site's directory); its output goes to ``log``."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = log.open("w")
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            command, env=env, cwd=SITE, stdout=self._out, stderr=subprocess.STDOUT
        )

    def stop(self) -> str:
        """SIGTERM, then SIGKILL after 30 s; returns the output."""
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self._out.close()
        return self.output()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


class Server(Process):
    """A web server of the site (gunicorn or uvicorn)."""

    def __init__(self, server: str, port: int, workers: int, env: dict[str, str], log: Path, preload=True):
        self.base_url = f"http://127.0.0.1:{port}"
        self.url = f"{self.base_url}{PATHS[server]}"
        super().__init__(command(server, port, workers, preload), env, log)

    def wait_ready(self, workers: int, timeout: float = 60) -> None:
        """Until answers come from at least ``min(workers, 2)`` distinct workers."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                pids = {requests.get(self.url, timeout=5).json()["pid"] for _ in range(40)}
                if len(pids) >= min(workers, 2):
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"the server did not start:\n{self.output()[-3000:]}")
            time.sleep(0.5)


@dataclass(frozen=True)
class Request:
    sent: float  # time.monotonic() when sent
    took: float  # seconds
    status: str  # the status code, or the exception's class name

    @property
    def ok(self) -> bool:
        return self.status == "200"


class Load:
    """``threads`` clients, each one request at a time with a pause (a bounded load: at most
    ``threads / pause`` requests a second, 80 by default), from creation
    until :meth:`stop`, which returns every request in the order they ended."""

    # The tests need concurrent requests through every token rotation, not a saturated machine: flat out
    # (pause 0.01) the fleets kept 2 cores busy, and beside the other lanes a starved sweeper re-AUTHed late.
    def __init__(self, url: str, threads: int = 8, pause: float = 0.1) -> None:
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._clients = [threading.Thread(target=self._client, args=(url, pause)) for _ in range(threads)]
        for client in self._clients:
            client.start()

    def _client(self, url: str, pause: float) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                status = str(session.get(url, timeout=10).status_code)
            except requests.RequestException as exc:
                status = type(exc).__name__
                session = requests.Session()
            with self._lock:
                self.requests.append(Request(sent, time.monotonic() - sent, status))
            self._stop.wait(pause)

    def stop(self) -> list[Request]:
        self._stop.set()
        for client in self._clients:
            client.join()
        return self.requests


def load(url: str, seconds: float, threads: int = 8, pause: float = 0.1) -> tuple[Counter[str], list[float]]:
    """A :class:`Load` for ``seconds``: the outcomes (status code or exception class) and every request's
    latency in seconds."""
    running = Load(url, threads, pause)
    time.sleep(seconds)
    done = running.stop()
    return Counter(r.status for r in done), [r.took for r in done]


def failures_outside(done: list[Request], windows: list[tuple[float, float]]) -> list[Request]:
    """The failed requests that were not in flight during any of ``windows`` ((start, end) monotonic)."""
    return [
        r for r in done
        if not r.ok and not any(r.sent <= end and r.sent + r.took >= start for start, end in windows)
    ]  # fmt: skip


def threads_of(base_url: str, workers: int, attempts: int = 200) -> dict[int, list[str]]:
    """{pid: names of its threads} of the workers behind ``base_url`` (asks until each has answered)."""
    found: dict[int, list[str]] = {}
    for _ in range(attempts):  # a new connection each time: uvicorn keeps a connection on one worker
        answer = requests.get(f"{base_url}/threads", timeout=10, headers={"Connection": "close"}).json()
        found[answer["pid"]] = answer["threads"]
        if len(found) >= workers:
            break
    return found


def first_answers(
    url: str, workers: int, started: float, timeout: float = 120
) -> tuple[dict[int, tuple[float, float]], Counter[str]]:
    """From a cold start: each worker's first answer, as {pid: (seconds since ``started`` when it came,
    latency of that request)}, probing with 2 x ``workers`` clients until every worker has answered; and the
    failures meanwhile (status codes other than 200, exception class names). Connections the server refuses
    before it listens are not failures: probing starts once the port accepts."""
    firsts: dict[int, tuple[float, float]] = {}
    failures: Counter[str] = Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + timeout
    address = urlsplit(url)
    while True:
        try:
            socket.create_connection((address.hostname, address.port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)

    def client() -> None:
        session = requests.Session()
        while time.monotonic() < deadline:
            with lock:
                if len(firsts) >= workers:
                    return
            sent = time.perf_counter()
            try:
                answer = session.get(url, timeout=30)
                pid = answer.json()["pid"] if answer.status_code == 200 else None
                failure = None if pid else str(answer.status_code)
            except (requests.RequestException, ValueError) as exc:
                pid, failure = None, type(exc).__name__
            if failure is not None:
                with lock:
                    failures[failure] += 1
                session = requests.Session()
                time.sleep(0.05)
                continue
            took = time.perf_counter() - sent
            with lock:
                firsts.setdefault(pid, (time.monotonic() - started, took))

    clients = [threading.Thread(target=client) for _ in range(2 * workers)]
    for c in clients:
        c.start()
    for c in clients:
        c.join()
    return firsts, failures


def worker_stats(master: int) -> dict[int, tuple[int, int]]:
    """{pid: (threads, RSS in kB)} of the server's worker processes (the children of ``master``)."""
    stats: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = dict(
                line.split(":", 1) for line in (entry / "status").read_text().splitlines() if ":" in line
            )
        except OSError:  # gone meanwhile
            continue
        if int(fields["PPid"]) == master and "VmRSS" in fields:
            stats[int(entry.name)] = (int(fields["Threads"]), int(fields["VmRSS"].split()[0]))
    return stats
