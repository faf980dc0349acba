"""Running the fleet site under real servers: shared by tests/test_fleet.py and benchmarks/fleet.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import requests

SITE = Path(__file__).resolve().parent
ROOT = SITE.parent.parent
SCOPES = {"postgres": "https://ossrdbms-aad.database.windows.net", "redis": "https://redis.azure.com"}
PATHS = {"gunicorn": "/sync", "uvicorn": "/async"}


def site_env(imds: Any, pg: Any, redis: Any, identity: dict[str, Any] | None = None) -> dict[str, str]:
    """The environment of the site's processes: the identity endpoint, and FLEET_CONFIG for fleet_settings."""
    config = {
        "database": pg.database_settings("app-identity"),
        "cache": redis.cache_settings(),
        "identity": identity or {},
    }
    env = {**os.environ, **{k: v for k, v in imds.environ().items() if v is not None}}
    env.update(
        FLEET_CONFIG=json.dumps(config),
        DJANGO_SETTINGS_MODULE="fleet_settings",
        PYTHONPATH=os.pathsep.join([str(SITE), str(ROOT)]),
    )
    return env


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


class Server:
    """A server process of the site; its output goes to ``log``."""

    def __init__(self, server: str, port: int, workers: int, env: dict[str, str], log: Path, preload=True):
        self.url = f"http://127.0.0.1:{port}{PATHS[server]}"
        self.log = log
        self._out = log.open("w")
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            command(server, port, workers, preload),
            env=env,
            cwd=SITE,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

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

    def stop(self) -> str:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._out.close()
        return self.output()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def load(url: str, seconds: float, threads: int = 8, pause: float = 0.01) -> tuple[Counter[str], list[float]]:
    """``threads`` clients, each one request at a time with a short pause (a bounded load): the outcomes
    (status code or exception class) and every request's latency in seconds."""
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client() -> None:
        session = requests.Session()
        while time.monotonic() < stop:
            started = time.perf_counter()
            try:
                status = str(session.get(url, timeout=10).status_code)
            except requests.RequestException as exc:
                status = type(exc).__name__
            took = time.perf_counter() - started
            with lock:
                outcomes[status] += 1
                latencies.append(took)
            time.sleep(pause)

    workers = [threading.Thread(target=client) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return outcomes, latencies


def first_answers(
    url: str, workers: int, started: float, timeout: float = 120
) -> dict[int, tuple[float, float]]:
    """From a cold start: each worker's first answer, as {pid: (seconds since ``started`` when it came,
    latency of that request)}, probing with 2 x ``workers`` clients until every worker has answered."""
    firsts: dict[int, tuple[float, float]] = {}
    lock = threading.Lock()
    deadline = time.monotonic() + timeout

    def client() -> None:
        session = requests.Session()
        while time.monotonic() < deadline:
            with lock:
                if len(firsts) >= workers:
                    return
            sent = time.perf_counter()
            try:
                pid = session.get(url, timeout=30).json()["pid"]
            except (requests.RequestException, ValueError):
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
    return firsts


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
