"""A fleet: real gunicorn (--preload, 4 workers, sync views) and real uvicorn (4 workers, an async view with
``await cache.aget/aset`` and the ORM through ``sync_to_async``) serving a small site (tests/fleet_site) on
the stand-ins under a bounded load on loopback, across at least three token rotations.

Pass: no non-2xx answer, no connection the Redis enforcer closed, no refused Postgres sign-in, and at most
one identity request per worker and scope per renewal (per host with ``TOKEN_CACHE_DIR``)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

from django_azure_mi.testing.postgres import free_port

SITE = Path(__file__).parent / "fleet_site"
ROOT = Path(__file__).parent.parent
TTL = 15.0
WORKERS = 4
SCOPES = {"postgres": "https://ossrdbms-aad.database.windows.net", "redis": "https://redis.azure.com"}
SERVERS = {  # the command line (after python) for a port
    "gunicorn": lambda port: ["-m", "gunicorn", "--preload", "-w", str(WORKERS), "-b", f"127.0.0.1:{port}",
                              "fleet_app:application"],
    "uvicorn": lambda port: ["-m", "uvicorn", "--workers", str(WORKERS), "--port", str(port),
                             "fleet_app:asgi_application"],
}  # fmt: skip
PATHS = {"gunicorn": "/sync", "uvicorn": "/async"}


def site_env(azure_postgres, azure_redis, azure_imds, identity: dict) -> dict[str, str]:
    config = {
        "database": azure_postgres.database_settings("app-identity"),
        "cache": azure_redis.cache_settings(),
        "identity": identity,
    }
    env = {**os.environ, **{k: v for k, v in azure_imds.environ().items() if v is not None}}
    env.update(
        FLEET_CONFIG=json.dumps(config),
        DJANGO_SETTINGS_MODULE="fleet_settings",
        PYTHONPATH=os.pathsep.join([str(SITE), str(ROOT)]),
    )
    return env


def load(url: str, seconds: float, threads: int = 8) -> Counter[str]:
    """``threads`` clients, each one request at a time with a short pause: a bounded load."""
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client() -> None:
        session = requests.Session()
        while time.monotonic() < stop:
            try:
                status = str(session.get(url, timeout=10).status_code)
            except requests.RequestException as exc:
                status = type(exc).__name__
            with lock:
                outcomes[status] += 1
            time.sleep(0.01)

    workers = [threading.Thread(target=client) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return outcomes


@pytest.mark.slow
@pytest.mark.azure_imds(ttl=TTL)
@pytest.mark.parametrize(
    ("server", "cache_dir"), [("gunicorn", False), ("gunicorn", True), ("uvicorn", False)],
    ids=["gunicorn", "gunicorn+TOKEN_CACHE_DIR", "uvicorn"],
)  # fmt: skip
def test_a_fleet_serves_through_three_rotations(
    server, cache_dir, azure_imds, azure_postgres, azure_redis, tmp_path
):
    identity = {"TOKEN_CACHE_DIR": str(tmp_path / "tokens")} if cache_dir else {}
    env = site_env(azure_postgres, azure_redis, azure_imds, identity)
    migrate = subprocess.run(
        [sys.executable, "-m", "django", "migrate", "--noinput", "-v", "0"],
        env=env, cwd=SITE, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert migrate.returncode == 0, migrate.stderr[-2000:]
    port = free_port()
    command = [sys.executable, *SERVERS[server](port)]
    log = (Path(azure_postgres.log_file).parent / f"{server}.log").open("w+")
    process = subprocess.Popen(command, env=env, cwd=SITE, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}{PATHS[server]}"
    try:
        deadline = time.monotonic() + 60
        while True:  # every worker up: answers come from WORKERS distinct pids
            try:
                pids = {requests.get(url, timeout=5).json()["pid"] for _ in range(40)}
                if len(pids) >= min(WORKERS, 2):
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline and process.poll() is None, "the server did not start"
            time.sleep(0.5)
        refusals = len(azure_postgres.refusals)
        closed = azure_redis.closed_connections
        requests_before = {name: azure_imds.request_count(r) for name, r in SCOPES.items()}
        seconds = 3.2 * TTL  # at least three rotations of every worker's tokens
        outcomes = load(url, seconds)
        imds = {name: azure_imds.request_count(r) - requests_before[name] for name, r in SCOPES.items()}
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.seek(0)
        output = log.read()
        log.close()
    renewals = seconds / (TTL / 2)  # the core renews a token once half its life has passed
    print(f"{server}: {dict(outcomes)}; identity requests during the load: {imds}")
    assert set(outcomes) == {"200"} and outcomes["200"] > 200, (outcomes, output[-3000:])
    assert azure_redis.closed_connections == closed, output[-3000:]
    assert azure_postgres.refusals[refusals:] == [], output[-3000:]
    per_renewal = 1 if cache_dir else WORKERS  # the cache dir: one request per host, scope and renewal
    for name, count in imds.items():
        assert count <= per_renewal * (math.ceil(renewals) + 1), (name, count)
